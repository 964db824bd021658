"""What a new user meets at `prefenv train`: each failure the user-path issue reported, reproduced
as reported, now answered (budgets said up front, one-line errors, --overwrite that loses nothing,
a run killed before its first round resumes, README commands that parse as written)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prefenv.app.api import start
from prefenv.app.budget import budget_warnings, plan_budget
from prefenv.app.cli import _parser, main, train_spec
from prefenv.app.spec import TrainSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--env", "prefenv/Reacher-v0", "--steps", "1600", "--initial-steps", "400",
    "--queries", "24", "--rounds", "3", "--n-envs", "2", "--n-steps", "100",
    "--segment-length", "25", "--reward-epochs", "3", "--ensemble", "2",
]  # fmt: skip


def test_steps_is_a_ceiling_and_the_reported_overshoot_is_refused_with_the_fix():
    """`--steps 16000` became 24,576 with no word (7 chunks each rounded up to a 2,048 rollout)."""
    with pytest.raises(ValueError, match=r"--steps 16000 leaves 2 whole rollouts of 2048 steps"):
        TrainSpec(steps=16_000, rounds=7).check_budget()
    with pytest.raises(ValueError, match=r"raise --steps to 24576 or more"):
        start(TrainSpec(steps=16_000, rounds=7), "never-written")
    TrainSpec(steps=16_000).check_budget()  # unset, --rounds scales with --steps: one round
    assert not Path("never-written").exists()
    assert plan_budget(TrainSpec(steps=24_576)).total == 24_576
    for steps in (24_576, 30_000, 100_000, 1_000_000):  # never more than asked, whole rollouts
        plan = plan_budget(TrainSpec(steps=steps))
        assert steps - 8 * 2048 < plan.total <= steps and plan.total % 2048 == 0
    assert budget_warnings(TrainSpec()) == []  # the main job: nothing to warn about


def test_the_reported_sac_budget_that_finished_no_episode_is_said_before_the_run():
    """`--agent sb3-sac --steps 15000`: every round shorter than a 1000-step HalfCheetah episode."""
    messages = budget_warnings(TrainSpec(agent="sb3-sac", steps=15_000))
    (message,) = [m for m in messages if "each round" in m]
    assert "less than one 1000-step episode" in message and "--steps to at least" in message
    needed = int(re.search(r"at least (\d+)", message).group(1))
    assert not [m for m in budget_warnings(TrainSpec(agent="sb3-sac", steps=needed))
                if "each round" in m]  # fmt: skip


def test_ctrl_c_says_how_to_resume_in_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from prefenv.loop import PreferenceLoop

    step, calls = PreferenceLoop.step, []

    def interrupted_in_round_two(loop: PreferenceLoop):
        calls.append(loop.round)
        if len(calls) in (2, 3):  # train's second round, then resume's first
            raise KeyboardInterrupt  # as Ctrl-C in the middle of a round
        return step(loop)

    out = tmp_path / "run"
    monkeypatch.setattr(PreferenceLoop, "step", interrupted_in_round_two)
    assert main(["train", *TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "prefenv train: interrupted. Every finished round is kept" in err
    assert f"continue with: prefenv resume --out {out}" in err and "Traceback" not in err
    assert main(["resume", "--out", str(out)]) == 130  # interrupted again, in its first round
    assert "prefenv resume: interrupted." in capsys.readouterr().err
    monkeypatch.setattr(PreferenceLoop, "step", step)
    assert main(["resume", "--out", str(out)]) == 0
    assert "restored round 1/3" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["labels_used"] == 24


def test_a_run_with_no_finished_episode_says_so_in_its_summary(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--agent", "sb3-sac", "--n-envs", "8", "--steps", "640",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "warning: each round trains about" in captured.err  # said at the start, in one line
    assert "  feedback    every method off\n" in captured.out
    assert "tanh output, uniform queries\n" in captured.out  # Reacher: no query entry
    assert "final true return: no episode finished" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_true_return"] is None and "no episode finished" in summary["warning"]
    assert "no episode finished" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--steps", "-100"], "--steps (-100) must exceed --initial-steps"),
        (["--query-method", "entropie"], "unknown --query-method 'entropie': choose one of auto,"),
        (["--queries", "0"], "--queries must be at least 2, got 0"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--label-noise", "0.5"], "--label-noise must be in [0, 0.5), got 0.5"),
        (
            ["--segment-draw", "steps"],
            "unknown --segment-draw 'steps': choose one of episode, step",
        ),
        (["--initial-query-fraction", "1"], "--initial-query-fraction must be in (0, 1), got 1"),
        (
            ["--query-schedule", "linear"],
            "unknown --query-schedule 'linear': choose one of hyperbolic, constant",
        ),
        (["--env", "prefenv/HalfCheeta-v0"], "did you mean prefenv/HalfCheetah-v0"),
        (["--import", "no_such_pkg"], "cannot import module 'no_such_pkg'"),
    ],
)
def test_every_rejected_argument_names_its_flag_and_leaves_out_absent(tmp_path, capsys, bad,
                                                                      message):  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", *TINY, *bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_json_and_a_misspelled_flag_are_one_line(tmp_path):
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prefenv.app.cli", *argv],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    bad_json = run("train", "--env-kwargs", "{objective: 1}", "--out", str(tmp_path / "a"))
    assert bad_json.returncode == 2 and bad_json.stderr.count("\n") == 1
    assert "not valid JSON: Expecting property name enclosed in double quotes at column 2" in (
        bad_json.stderr
    )
    typo = run("train", "--querys", "10", "--out", str(tmp_path / "b"))
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1
    assert "unrecognized arguments: --querys 10; did you mean --queries?" in typo.stderr
    assert "prefenv train --help" in typo.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help_shows_every_default():
    help_text = _parser()._subparsers._group_actions[0].choices["train"].format_help()
    options = help_text[help_text.index("options:") :]
    for flag in ("--steps", "--queries", "--rounds", "--out", "--import", "--env-kwargs"):
        block = options[options.index("  " + flag + " ") :].split("\n  --")[0]
        assert "(default:" in block, f"{flag} shows no default"


def test_import_prefenv_registers_the_ids_without_heavy_imports():
    code = (
        "import sys, gymnasium as gym, prefenv\n"
        "assert 'prefenv/Hopper-v0' in gym.registry and 'prefenv/TextSentiment-v0' in gym.registry\n"
        "heavy = [m for m in ('mujoco', 'transformers', 'agents', 'envs.mujoco') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "env = gym.make('prefenv/Reacher-v0')\n"
        "print(env.observation_space.shape)\n"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(10,)"


def test_overwrite_replaces_the_run_and_its_events_and_keeps_it_if_the_new_start_fails(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    old_events = sorted(p.name for p in (out / "agent_logs").rglob("events.out.tfevents*"))
    assert old_events  # the agent's and the rounds' TensorBoard events
    old_run = (out / "loop_state.json").read_bytes()
    capsys.readouterr()
    # a refused retry without --overwrite names both ways out
    assert main(["train", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"prefenv resume --out {out}" in err and "--overwrite" in err
    # an --overwrite start that fails after the checks puts the old run back untouched
    failing = ["train", *TINY, "--env-kwargs", '{"no_such_kwarg": 1}', "--overwrite"]
    assert main([*failing, "--out", str(out)]) == 2
    assert (out / "loop_state.json").read_bytes() == old_run and (out / "notes.txt").exists()
    assert not list(out.glob(".overwritten-*"))
    # a good --overwrite start replaces every run file, old event files included
    assert main(["train", *TINY, "--seed", "1", "--overwrite", "--out", str(out)]) == 0
    assert load_spec(out).seed == 1 and (out / "notes.txt").read_text() == "mine"
    new_events = {p.name for p in (out / "agent_logs").rglob("events.out.tfevents*")}
    assert not new_events & set(old_events)
    rounds_events = list((out / "agent_logs" / "rounds").glob("events.out.tfevents*"))
    assert len(rounds_events) == 1


def test_a_run_killed_before_its_first_round_resumes_from_its_settings(tmp_path, capsys):
    """Was: resume said "has no finished round to resume from: start it again", train said
    "already holds a run: continue it with prefenv resume": a loop with no way out."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    whole = json.loads((out / "summary.json").read_text())
    for name in ("loop_state.json", "summary.json", "rounds.csv"):
        (out / name).unlink()  # as if killed during round 1: its labels are in the store
    capsys.readouterr()
    assert main(["resume", "--out", str(out)]) == 0
    assert (
        "no round had finished: starting again from run.json, 24 stored" in capsys.readouterr().out
    )
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["labels_used"] == whole["labels_used"] == 24


def _readme_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("prefenv "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_prefenv_command_in_the_readme_parses_and_its_settings_check(tmp_path):
    """The long README runs cannot run in the suite; each is parsed and its TrainSpec built."""
    commands = _readme_commands()
    assert {argv[0] for argv in commands} >= {"train", "resume", "eval", "check", "text"}
    for argv in commands:
        args = _parser().parse_args(argv)
        if args.command == "train":
            train_spec(args).with_preset().check_budget()  # every value checked, id resolved


def test_a_run_json_of_schema_1_reads_as_the_same_run(tmp_path):
    """Schema 1 counted --rounds after the initial round and named one --agent-module."""
    old = {"env": "prefenv/Reacher-v0", "rounds": 2, "agent_module": "", "steps": 1600,
           "initial_steps": 400, "queries": 24, "n_envs": 2, "n_steps": 100}  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({"schema": "prefenv.run/1", "spec": old}))
    spec = load_spec(tmp_path)
    assert spec.rounds == 3 and spec.imports == () and spec.loop_config().n_rounds == 2


def test_unsupervised_pretraining_trains_the_initial_policy_on_the_intrinsic_reward(tmp_path):
    """--unsupervised changes what round 0 trains on, and only round 0: the recorder's learned
    returns never include the bonus (they stay those of the reward model's predictor)."""
    runs = {}
    for name, extra in (("plain", []), ("pebble", ["--unsupervised"])):
        assert main(["train", *TINY, *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "loop_state.json").read_text())["history"]
    assert runs["plain"][0]["true_return"] != runs["pebble"][0]["true_return"]
    assert load_spec(tmp_path / "pebble").unsupervised is True


def test_the_summary_evaluates_the_final_agent_deterministic_and_sampled(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--eval-episodes", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_episodes"] == 2
    for mode in ("deterministic", "sampled"):
        assert summary[f"eval_{mode}_length"] == 50  # Reacher's episodes never end early
        assert summary[f"eval_{mode}_return"] < 0
    assert summary["eval_deterministic_return"] != summary["eval_sampled_return"]
    assert "eval_sampled_return" in (out / "summary.md").read_text()
    assert main(["train", *TINY, "--eval-episodes", "0", "--out", str(tmp_path / "b")]) == 0
    assert "eval_episodes" not in json.loads((tmp_path / "b" / "summary.json").read_text())
