"""`prefenv train / resume / eval / check` end to end at tiny size (Reacher: 50-step episodes)."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ppo_kl import PPOKL
from prefenv.app.cli import main
from prefenv.app.runs import TrainingRun, make_vector_env
from prefenv.app.spec import TrainSpec, load_spec
from prefenv.store import ComparisonStore

TINY = [
    "--env", "prefenv/Reacher-v0", "--steps", "1600", "--initial-steps", "400",
    "--queries", "24", "--rounds", "3", "--n-envs", "2", "--n-steps", "100",
    "--segment-length", "25", "--reward-epochs", "3", "--ensemble", "2",
]  # fmt: skip


@pytest.mark.parametrize("agent", ["ppo-kl", "sb3-ppo", "sb3-sac"])
def test_train_writes_a_complete_run_folder(tmp_path, agent, capsys):
    out = tmp_path / agent
    extra = ["--steps", "800", "--initial-steps", "200"] if agent == "sb3-sac" else []
    assert main(["train", *TINY, *extra, "--agent", agent, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "learning_curve.png" in printed and "summary.md" in printed
    for name in ("run.json", "comparisons.sqlite", "loop_state.json", "rounds.csv",
                 "learning_curve.png", "summary.json", "summary.md", "reward_model/config.json"):  # fmt: skip
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels_used"] == 24
    assert summary["timesteps"] >= (800 if agent == "sb3-sac" else 1600)
    rounds = (out / "rounds.csv").read_text().strip().splitlines()
    assert len(rounds) == 1 + 3  # header + --rounds 3
    # SAC's replay buffer is rescored after every refit (PEBBLE); on-policy agents keep none
    relabelled = [
        r["relabelled"] for r in json.loads((out / "loop_state.json").read_text())["history"]
    ]
    assert all(relabelled) if agent == "sb3-sac" else not any(relabelled), relabelled


def _final_state(out: Path) -> dict:
    """A finished run's comparisons, round metrics, and reward-model and agent tensors."""
    with ComparisonStore(out / "comparisons.sqlite") as store:
        comparisons = store.load(labelled_only=False)
    run = TrainingRun(load_spec(out), out, resume=True)
    policy = run.agent.policy if isinstance(run.agent, PPOKL) else run.agent.model.policy
    run.store.close()
    history = json.loads((out / "loop_state.json").read_text())["history"]
    return {
        "labels": [(c.label, c.teacher) for c in comparisons],
        "segments": [(s.obs, s.acts, s.true_rewards)
                     for c in comparisons for s in (c.segment0, c.segment1)],
        "rounds": [json.dumps({k: v for k, v in r.items() if k != "seconds"}
                   | {"reward_model": {k: v for k, v in r["reward_model"].items() if k != "seconds"}})
                   for r in history],  # JSON text: NaN metrics compare equal
        "tensors": {"reward_model": run.reward_model.state_dict(), "agent": policy.state_dict()},
        "timesteps": run.agent.num_timesteps,
    }  # fmt: skip


METHODS = [
    "--rune", "--query-window", "3", "--unsupervised", "--robust-labels", "--surf", "--reed",
    "--label-noise", "0.1", "--segment-draw", "step", "--initial-query-fraction", "0.3",
    "--query-schedule", "constant",
]  # fmt: skip  # issue 14's switchable methods, all on


@pytest.mark.parametrize(
    ("agent", "methods"),
    [("ppo-kl", []), ("sb3-ppo", []), ("ppo-kl", METHODS)],
    ids=["ppo-kl", "sb3-ppo", "ppo-kl-methods-on"],
)
def test_a_killed_run_resumed_ends_bit_identical_to_one_never_stopped(
    tmp_path, agent, methods, monkeypatch, capsys
):
    argv = ["train", *TINY, "--rounds", "4", "--agent", agent, *methods]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    banner = "  feedback    " + (
        "PEBBLE pre-training, RUNE bonus, QPA window 3, SURF, REED, RIME filter, label noise 0.1, "
        "segments drawn per step" if methods else "every method off"
    )  # fmt: skip
    assert banner + "\n" in capsys.readouterr().out
    checkpoint = TrainingRun.checkpoint

    def checkpoint_then_die(run: TrainingRun) -> None:
        checkpoint(run)
        if run.loop.round == 2:  # killed right after round 1's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "checkpoint", checkpoint_then_die)
    assert main([*argv, "--out", str(tmp_path / "killed")]) == 130  # Ctrl-C's exit code
    assert "continue with: prefenv resume --out" in capsys.readouterr().err
    monkeypatch.undo()
    assert json.loads((tmp_path / "killed" / "loop_state.json").read_text())["loop"]["round"] == 2
    torch.manual_seed(12345)  # a fresh process: the global RNG state it starts with must not matter
    np.random.seed(12345)  # noqa: NPY002 (SB3 draws from the legacy global generator)
    assert main(["resume", "--out", str(tmp_path / "killed")]) == 0
    whole, resumed = _final_state(tmp_path / "whole"), _final_state(tmp_path / "killed")
    assert len(whole["labels"]) == 24 and whole["timesteps"] >= 1600
    # bit-identical: every comparison, round metric, reward-model and agent tensor
    assert resumed["labels"] == whole["labels"] and resumed["rounds"] == whole["rounds"]
    for got, expected in zip(resumed["segments"], whole["segments"], strict=True):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    torch.testing.assert_close(resumed["tensors"], whole["tensors"], rtol=0, atol=0)
    assert resumed["timesteps"] == whole["timesteps"]


def test_resume_continues_an_interrupted_run_and_eval_reports_returns(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    state = json.loads((out / "loop_state.json").read_text())
    # simulate a kill after round 0: roll the loop state back to its first round
    state["loop"]["round"] = 1
    state["loop"]["labels_used"] = state["history"][0]["labels_used"]
    state["history"] = state["history"][:1]
    (out / "loop_state.json").write_text(json.dumps(state))
    assert main(["resume", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # comparisons stored by the "killed" rounds are reused, not asked again
    assert summary["labels_used"] == 24
    capsys.readouterr()
    assert main(["eval", "--out", str(out), "--episodes", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and result["true_return_mean"] < 0  # Reacher: distance cost


def _cut_to(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("damage", ["deleted", "empty", "cut-mid-file", "foreign", "behind"])
def test_resume_refuses_a_store_that_lost_labels_and_eval_never_needs_it(tmp_path, capsys, damage):
    """The issue's report: a moved or truncated store was silently recreated, 235 labels lost."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    store = out / "comparisons.sqlite"
    with ComparisonStore(store) as kept:
        labels, rows = len(kept), kept.load(labelled_only=False)
    if damage == "deleted":
        store.rename(tmp_path / "elsewhere.sqlite")
    elif damage == "empty":
        _cut_to(store, 0)
    elif damage == "cut-mid-file":
        _cut_to(store, store.stat().st_size // 2)
    elif damage == "foreign":  # another store with the same rows in its place
        store.unlink()
        with ComparisonStore(store) as other:
            other.append(rows)
    else:  # the run's own store, rows lost (e.g. an old backup put back)
        with sqlite3.connect(store) as conn:
            conn.execute("DELETE FROM comparisons WHERE id > ?", (labels // 2,))
        conn.close()
    before = store.read_bytes() if store.exists() else None
    capsys.readouterr()
    assert main(["resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefenv resume: cannot resume") and "Traceback" not in err
    assert f"the run recorded {labels} labels" in err and "--overwrite" in err
    if damage == "behind":
        assert f"holds {labels // 2} comparisons" in err
    after = store.read_bytes() if store.exists() else None
    assert after == before  # never a new or rewritten store
    # eval reads the agent and the reward model only
    assert main(["eval", "--out", str(out), "--episodes", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert (store.read_bytes() if store.exists() else None) == before


def test_train_refuses_to_overwrite_and_names_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "prefenv resume" in capsys.readouterr().err


def test_unknown_teacher_and_agent_are_clear_errors(tmp_path, capsys):
    assert main(["train", *TINY, "--teacher", "orcale", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown teacher 'orcale'" in err and "or human: people label" in err
    assert main(["train", *TINY, "--teacher", "human", "--fallback-teacher", "orcale",
                 "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert "--fallback-teacher: unknown teacher 'orcale'" in capsys.readouterr().err
    assert main(["train", *TINY, "--agent", "dqn", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'dqn'" in err and "ppo-kl" in err and "sb3-sac" in err
    assert "register_agent('dqn', factory)" in err and "--import" in err
    argv = ["train", *TINY, "--import", "no_such_module", "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [
        ["--queries", "0"],
        ["--env", "prefenv/Reachr-v0"],
        ["--steps", "300"],
        ["--reward-output", "softplus"],
        ["--env", "prefenv/RecSlate-v0", "--reed"],
    ],
    ids=[
        "no-queries",
        "misspelled-env",
        "steps-below-initial",
        "unknown-reward-output",
        "reed-on-a-next-obs-reward",
    ],  # fmt: skip
)
def test_a_rejected_start_leaves_nothing_that_refuses_the_retry(tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert main(["train", *TINY, *bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefenv train: ") and "Traceback" not in err
    assert not out.exists()  # no run.json, no empty store: the corrected command just runs
    (out / "mine.txt").parent.mkdir()
    (out / "mine.txt").write_text("kept")  # a folder the user already had keeps its files
    assert main(["train", *TINY, *bad, "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_a_text_start_with_a_bad_base_model_can_be_retried(tmp_path, capsys):
    out = tmp_path / "text"
    argv = ["text", "base", "--base-model", str(tmp_path / "nowhere"), "--out", str(out)]
    assert main(argv) == 2
    assert "needs a local model directory" in capsys.readouterr().err
    assert not out.exists()  # no text_config.json holding the wrong --base-model


USER_AGENTS = textwrap.dedent(
    '''
    """A user's own agent for `prefenv train`: seeded uniform-random actions."""

    import json
    from pathlib import Path

    import numpy as np
    from gymnasium.vector import AutoresetMode

    from prefenv.agent import register_agent


    class RandomAgent:
        def __init__(self, env, seed, env_seed, num_timesteps=0):
            self.env, self.seed, self.env_seed = env, seed, env_seed
            self.num_timesteps = num_timesteps
            self.rng = np.random.default_rng(seed)
            self.started = False

        def _actions(self, n):
            space = self.env.single_action_space
            return self.rng.uniform(space.low, space.high, (n, *space.shape)).astype(space.dtype)

        def learn(self, total_timesteps):
            if not self.started:
                self.env.reset(seed=self.env_seed)
                self.started = True
            for _ in range(-(-total_timesteps // self.env.num_envs)):
                self.env.step(self._actions(self.env.num_envs))
                self.num_timesteps += self.env.num_envs

        def predict(self, obs, deterministic=True):
            return self._actions(len(obs))

        def save(self, directory):
            path = Path(directory) / "random.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"seed": self.seed, "env_seed": self.env_seed, "steps": self.num_timesteps}
            path.write_text(json.dumps(state))
            return path


    class RandomFactory:
        autoreset_mode = AutoresetMode.NEXT_STEP
        on_policy = True

        def check(self, settings):
            if settings.kl_coef:
                raise ValueError("random-walk has no KL leash")

        def build(self, settings, env, *, seed, env_seed, log_dir):
            return RandomAgent(env, seed, env_seed)

        def load(self, settings, env, directory, *, log_dir):
            state = json.loads((directory / "random.json").read_text())
            return RandomAgent(env, state["seed"], state["env_seed"], state["steps"])


    register_agent("random-walk", RandomFactory())
    '''
)


def test_an_agent_registered_by_a_user_module_trains_resumes_and_evaluates(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "user_agents_cli.py").write_text(USER_AGENTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_agents_cli", raising=False)
    out = tmp_path / "run"
    argv = ["train", *TINY, "--import", "user_agents_cli", "--agent", "random-walk"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"] == "random-walk" and summary["labels_used"] == 24
    assert summary["timesteps"] == 1600 and summary["on_policy"] is True
    assert json.loads((out / "agent" / "random.json").read_text())["steps"] == 1600
    assert load_spec(out).imports == ("user_agents_cli",)  # resume and eval import it again
    capsys.readouterr()
    assert main(["resume", "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["eval", "--out", str(out), "--episodes", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert main([*argv, "--kl-coef", "0.1", "--out", str(tmp_path / "leash")]) == 2
    assert "random-walk has no KL leash" in capsys.readouterr().err


def test_resume_of_a_non_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["resume", "--out", str(tmp_path)]) == 2
    assert "not a prefenv run folder" in capsys.readouterr().err


def test_check_command(capsys):
    assert main(["check", "prefenv/Reacher-v0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["obs_dim"] == 10 and report["act_dim"] == 2 and report["true_reward_in_info"]


def test_reward_output_linear_gives_an_unbounded_reward_network(tmp_path):
    from prefenv.app.runs import new_reward_model

    spec = TrainSpec(env="prefenv/Reacher-v0", reward_output="linear")
    venv = make_vector_env(spec)
    linear = new_reward_model(spec, venv)
    tanh = new_reward_model(TrainSpec(env="prefenv/Reacher-v0"), venv)
    assert {m.output_activation for m in linear.members} == {None}
    assert {m.output_activation for m in tanh.members} == {"tanh"}
    sigmoid = new_reward_model(TrainSpec(env="prefenv/Reacher-v0", reward_output="sigmoid"), venv)
    assert {m.output_activation for m in sigmoid.members} == {"sigmoid"}
    with torch.no_grad():
        for member in linear.members:  # scale the last layer: only tanh stays within [-1, 1]
            member.layers[-1].weight.mul_(1e3)
        obs = torch.randn(64, venv.single_observation_space.shape[0])
        acts = torch.randn(64, venv.single_action_space.shape[0])
        assert linear(obs, acts, obs).abs().max() > 1.0
        for member in sigmoid.members:
            member.layers[-1].weight.mul_(1e3)
        rewards = sigmoid(obs, acts, obs)
        assert rewards.min() >= 0.0 and rewards.max() <= 1.0 and rewards.std() > 0.1
    venv.close()


def test_resume_finishes_a_final_evaluation_a_kill_cut_short(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--eval-episodes", "1", "--out", str(out)]) == 0
    evaluation = json.loads((out / "final_eval.json").read_text())
    (out / "final_eval.json").unlink()  # killed during the evaluation, after the last round
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("eval_deterministic_return")
    (out / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["resume", "--out", str(out)]) == 0
    assert "the final evaluation was cut short, running it" in capsys.readouterr().out
    assert json.loads((out / "final_eval.json").read_text()) == evaluation  # same seed, same run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_deterministic_return"] == evaluation["deterministic"]["true_return_mean"]
    assert main(["resume", "--out", str(out)]) == 0  # now it is complete
    assert "is already complete" in capsys.readouterr().out
