"""`prefenv train / resume / eval / check` end to end at tiny size (Reacher: 50-step episodes)."""

from __future__ import annotations

import json

import pytest

from prefenv.app.cli import main

TINY = [
    "--env", "prefenv/Reacher-v0", "--steps", "1600", "--initial-steps", "400",
    "--queries", "24", "--rounds", "2", "--n-envs", "2", "--n-steps", "100",
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
    assert len(rounds) == 1 + 3  # header + initial round + 2 refits
    # SAC's replay buffer is rescored after every refit (PEBBLE); on-policy agents keep none
    relabelled = [
        r["relabelled"] for r in json.loads((out / "loop_state.json").read_text())["history"]
    ]
    assert all(relabelled) if agent == "sb3-sac" else not any(relabelled), relabelled


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


def test_train_refuses_to_overwrite_and_names_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "prefenv resume" in capsys.readouterr().err


def test_unknown_teacher_and_agent_are_clear_errors(tmp_path, capsys):
    assert main(["train", *TINY, "--teacher", "orcale", "--out", str(tmp_path / "a")]) == 2
    assert "unknown teacher 'orcale'" in capsys.readouterr().err
    assert main(["train", *TINY, "--agent", "dqn", "--out", str(tmp_path / "b")]) == 2
    assert "unknown agent 'dqn'" in capsys.readouterr().err


def test_resume_of_a_non_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["resume", "--out", str(tmp_path)]) == 2
    assert "not a prefenv run folder" in capsys.readouterr().err


def test_check_command(capsys):
    assert main(["check", "prefenv/Reacher-v0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["obs_dim"] == 10 and report["act_dim"] == 2 and report["true_reward_in_info"]
