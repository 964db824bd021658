"""The true-reward twin of a preference run: the same agent on the env's own reward.

A label-budget curve divides a preference run's true return by its twin's: the same agent, the
same settings (preset, steps, envs, seed) trained on the hidden true reward instead of the learned
one. :func:`train_true_reward` trains that twin into its own folder::

    TWIN/
      twin.json          the TrainSpec the twin copies (its preference settings go unused)
      twin_state.json    env steps trained so far (a killed twin resumes from its last chunk)
      agent/             the latest agent checkpoint (Agent.save: exactly resumable)
      agent_logs/        the agent's progress.csv and TensorBoard events
      final_eval.json    deterministic and sampled episodes, as prefenv train's final evaluation
      summary.json       the keys a preference run's summary has for the same figures

The agent is built by the registered factory exactly as ``prefenv train`` builds it (PPO-KL with
its obs and return normalisation; SB3 agents behind the same return-scaling ``VecNormalize``), on
the plain vector env instead of the learned-reward stack, and saved after every chunk of
``steps / CHUNKS`` env steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefenv.agent import agent_factory
from prefenv.app.runs import FINAL_EVAL_FILE, LOG_DIR, evaluate_agent, make_vector_env
from prefenv.app.spec import TrainSpec, write_json_atomic

__all__ = ["CHUNKS", "TWIN_FILE", "TWIN_SETTINGS", "train_true_reward", "twin_spec"]

TWIN_FILE = "twin.json"
STATE_FILE = "twin_state.json"
CHUNKS = 10
"""Checkpoints per twin run: a killed twin loses at most a tenth of its steps."""
TWIN_SETTINGS = (
    "env", "agent", "imports", "steps", "n_envs", "seed", "kl_coef", "n_steps", "vectorization",
    "env_kwargs", "reference", "ref_temperature", "eval_episodes", "preset", "hparams",
)  # fmt: skip
"""The ``TrainSpec`` fields a twin depends on; the rest (labels, teacher, reward model, the
feedback methods) only shape the learned reward, so runs that differ only there share a twin."""


def twin_spec(spec: TrainSpec | Mapping[str, Any]) -> TrainSpec:
    """The twin's settings: ``spec``'s :data:`TWIN_SETTINGS` (a spec, or some of those fields),
    every other field at its default; equal for runs that share a twin. No initial policy phase:
    the twin's steps all train on the true reward."""
    fields = spec if isinstance(spec, Mapping) else {n: getattr(spec, n) for n in TWIN_SETTINGS}
    unknown = set(fields) - set(TWIN_SETTINGS)
    if unknown:
        raise ValueError(f"a true-reward twin does not read {sorted(unknown)}: leave them out")
    return TrainSpec(**fields, initial_steps=0)


def _chunk(spec: TrainSpec) -> int:
    """Env steps per checkpoint (an on-policy agent rounds each up to whole rollouts)."""
    return max(spec.n_envs, math.ceil(spec.steps / CHUNKS))


def train_true_reward(
    spec: TrainSpec, out: str | os.PathLike[str], eval_seed: int = 12345
) -> dict[str, Any]:
    """Train (or finish training) ``spec``'s agent on the true reward in ``out``; its summary.

    A folder whose ``twin.json`` holds the same twin settings continues from its last chunk;
    one holding another twin's settings is refused.

    Returns:
        ``summary.json``: ``eval_deterministic_return``, ``eval_sampled_return`` (and lengths),
        ``final_true_return`` (the deterministic return, as the headline), ``timesteps``,
        ``wall_clock_s``, and the settings that define the twin.

    Raises:
        ValueError: ``out`` holds a different twin.
    """
    out = Path(out)
    spec = twin_spec(spec.with_preset())
    settings = json.loads(json.dumps(dataclasses.asdict(spec), default=list))
    saved = out / TWIN_FILE
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise ValueError(
            f"{out} holds the true-reward twin of other settings ({saved}): give the twin "
            "another folder, or delete this one to train it again"
        )
    summary_file = out / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, settings)
    state = json.loads((out / STATE_FILE).read_text()) if (out / STATE_FILE).is_file() else None
    factory, venv = agent_factory(spec.agent), make_vector_env(spec)
    if state is None:
        seeds = spec.seeds()
        agent = factory.build(spec, venv, seed=seeds.agent, env_seed=seeds.env,
                              log_dir=out / LOG_DIR)  # fmt: skip
        state = {"timesteps": 0, "seconds": 0.0}
    else:
        agent = factory.load(spec, venv, out / "agent", log_dir=out / LOG_DIR)
    chunk = _chunk(spec)
    while state["timesteps"] < spec.steps:
        started = time.perf_counter()
        agent.learn(min(chunk, spec.steps - state["timesteps"]))
        agent.save(out / "agent")
        state = {"timesteps": int(agent.num_timesteps),
                 "seconds": state["seconds"] + time.perf_counter() - started}  # fmt: skip
        write_json_atomic(out / STATE_FILE, state)
    evaluation = _evaluate(spec, agent, eval_seed)
    write_json_atomic(out / FINAL_EVAL_FILE, evaluation)
    summary = {
        "kind": "true-reward twin", **{name: settings[name] for name in TWIN_SETTINGS},
        "timesteps": state["timesteps"],
        "final_true_return": evaluation["true_return_mean"],
        **{f"eval_{mode}_{key}": evaluation[mode][f"{key}_mean"]
           for mode in ("deterministic", "sampled") for key in ("true_return", "length")},
        "wall_clock_s": round(state["seconds"], 1),
    }  # fmt: skip
    for mode in ("deterministic", "sampled"):  # the preference run's summary names these so
        summary[f"eval_{mode}_return"] = summary.pop(f"eval_{mode}_true_return")
    write_json_atomic(summary_file, summary)
    venv.close()
    return summary


def _evaluate(spec: TrainSpec, agent: Any, seed: int) -> dict[str, Any]:
    """Deterministic and sampled episodes on the plain env, as ``evaluate_run`` reports them."""
    eval_env = make_vector_env(dataclasses.replace(spec, n_envs=1))
    evaluation = evaluate_agent(agent, eval_env, max(1, spec.eval_episodes), seed)
    eval_env.close()
    return evaluation
