"""The Agent contract and the agent registry (prefenv.agent)."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import gymnasium as gym
import pytest
from gymnasium.vector import AutoresetMode

import prefenv.agent as agent_module
import prefenv.app.agents  # noqa: F401  (registers prefenv's own agents)
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.sb3 import SB3Agent, make_sb3_vec_env
from prefenv.agent import (
    Agent,
    RelabellingAgent,
    UnknownAgentError,
    agent_factory,
    register_agent,
    registered_agents,
)


def test_prefenvs_agents_are_registered_with_their_env_needs() -> None:
    assert {"ppo-kl", "sb3-ppo", "sb3-sac", "sb3-a2c"} <= set(registered_agents())
    ppo = agent_factory("ppo-kl")
    assert ppo.autoreset_mode == AutoresetMode.NEXT_STEP and ppo.on_policy
    sac = agent_factory("sb3-sac")
    assert sac.autoreset_mode == AutoresetMode.SAME_STEP and not sac.on_policy


def test_both_agents_implement_the_protocol_and_only_sb3_relabels() -> None:
    ppo = PPOKL(gym.make_vec("CartPole-v1", 1, vectorization_mode="sync"), PPOKLConfig(n_steps=8))
    bridge = make_sb3_vec_env("CartPole-v1", n_envs=1, seed=0)
    sb3 = SB3Agent.from_name("sb3-ppo", bridge, seed=0, n_steps=8, batch_size=8)
    assert isinstance(ppo, Agent) and not isinstance(ppo, RelabellingAgent)
    assert isinstance(sb3, Agent) and isinstance(sb3, RelabellingAgent)
    bridge.close()


def test_unknown_and_duplicate_names_say_how_to_fix_them() -> None:
    with pytest.raises(UnknownAgentError, match=r"unknown agent 'ddpg': choose one of .*ppo-kl"):
        agent_factory("ddpg")
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        register_agent("ppo-kl", agent_factory("sb3-ppo"))
    register_agent("ppo-kl", agent_factory("ppo-kl"))  # the same factory again is harmless
    with pytest.raises(ValueError, match="without spaces"):
        register_agent("my agent", agent_factory("ppo-kl"))


def test_an_installed_package_registers_agents_through_its_entry_point(
    tmp_path, monkeypatch
) -> None:
    (tmp_path / "entry_point_agents.py").write_text(
        "import prefenv.agent\n"
        "from prefenv.app.agents import SB3Factory\n"
        "prefenv.agent.register_agent('sb3-a2c-plugin', SB3Factory('sb3-a2c', on_policy=True))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "entry_point_agents", raising=False)
    point = EntryPoint("plugin", "entry_point_agents", agent_module.AGENT_ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        agent_module,
        "entry_points",
        lambda group: [point] if group == agent_module.AGENT_ENTRY_POINT_GROUP else [],
    )
    assert agent_factory("sb3-a2c-plugin").on_policy
    assert "sb3-a2c-plugin" in registered_agents()
