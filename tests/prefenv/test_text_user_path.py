"""`prefenv text` as a user meets it (issue 12): --overwrite, one stage again with other settings,
messages that name flags, failed starts that leave nothing, quiet transformers loading."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest

from prefenv.app.cli import main
from prefenv.app.text_config import READ_FIRST_BY, TextPipelineConfig
from prefenv.app.text_runs import run_pipeline
from prefenv.jsonl import import_jsonl
from prefenv.store import ComparisonStore

TINY = {
    "base_train_steps": 20, "sft_steps": 8, "sft_demos": 100, "queries": 48, "rm_epochs": 2,
    "ppo_steps": 3 * 4 * 6, "n_envs": 4, "max_new_tokens": 6, "dpo_epochs": 1,
    "eval_prompts": 12,
}  # fmt: skip
ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def text(stage: str, out: Path, *extra: str) -> int:
    """``prefenv text <stage> --out OUT`` with the tiny settings and ``extra`` options."""
    return main(["text", stage, "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run folder whose base, sft, rm (oracle teacher) and dpo stages finished."""
    out = tmp_path_factory.mktemp("text_user") / "run"
    run_pipeline(TextPipelineConfig(**TINY), out, stages=("base", "sft", "rm", "dpo"))
    return out


def _teachers(out: Path) -> dict[str, int]:
    with ComparisonStore(out / "comparisons.sqlite") as store:
        return store.teachers()


def _rm_metrics(out: Path) -> dict:
    return json.loads((out / "reward_model" / "stage.json").read_text())


def test_rm_with_another_teacher_after_a_finished_run(finished, caplog, capfd) -> None:
    # README: `prefenv text rm --out runs/sentiment --teacher verbose` ("one stage again").
    out = finished
    assert _teachers(out) == {"oracle": TINY["queries"]}
    with caplog.at_level(logging.WARNING):
        assert text("rm", out, "--teacher", "verbose") == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert "reward model" in err  # our own progress bar stays
    # Labelled by the new teacher; the old teacher's labels are kept.
    assert _teachers(out) == {"oracle": TINY["queries"], "verbose": TINY["queries"]}
    rm = _rm_metrics(out)
    assert rm["teacher"] == "verbose" and rm["comparisons"] == TINY["queries"]
    assert {c.teacher for c in import_jsonl(out / "comparisons.jsonl")} == {"verbose"}
    assert json.loads((out / "text_config.json").read_text())["teacher"] == "verbose"
    # The finished dpo stage trained on the oracle's labels: it is stale, and the log says so.
    assert not (out / "dpo").exists() and (out / "stale" / "dpo" / "stage.json").is_file()
    logged = caplog.text
    assert "dpo" in logged and "--teacher oracle saved, verbose given" in logged
    assert "prefenv text pipeline" in logged

    # Switching back reuses the oracle's labels: nothing new is asked.
    assert text("rm", out, "--teacher", "oracle") == 0
    assert _teachers(out) == {"oracle": TINY["queries"], "verbose": TINY["queries"]}
    oracle_rows = import_jsonl(out / "comparisons.jsonl")
    assert {c.teacher for c in oracle_rows} == {"oracle"}
    # dpo trains on the same teacher's comparisons as the reward model.
    assert text("dpo", out) == 0
    dpo = json.loads((out / "dpo" / "stage.json").read_text())
    assert dpo["pairs"] == sum(c.label != 0.5 for c in oracle_rows)


def test_a_population_teacher_counts_its_annotators_labels(finished, tmp_path) -> None:
    # A population writes "population/<annotator>": those rows are its labels, asked once.
    out = tmp_path / "run"
    for folder in ("base", "sft"):
        shutil.copytree(finished / folder, out / folder)
    assert text("rm", out, "--teacher", "population") == 0
    assert text("rm", out, "--teacher", "population", "--rm-epochs=1") == 0
    population = {k: v for k, v in _teachers(out).items() if k.startswith("population/")}
    assert len(population) > 1 and sum(population.values()) == TINY["queries"]
    assert _rm_metrics(out)["comparisons"] == TINY["queries"]


def test_a_change_an_earlier_stage_read_is_refused_naming_the_flag(finished, capsys) -> None:
    out = finished
    saved = (out / "text_config.json").read_bytes()
    assert text("rm", out, "--sft-steps=9") == 2
    err = capsys.readouterr().err
    assert "--sft-steps 8 saved, 9 given" in err and "sft_steps" not in err
    assert "first read by the sft stage" in err and f"prefenv text sft --out {out}" in err
    assert "--overwrite" in err and "another --out" in err and "saved settings to resume" in err
    # A PPO-KL option is named by its flag, never by the composed field.
    assert text("dpo", out, "--kl-coef=0.2") == 2
    err = capsys.readouterr().err
    assert "--kl-coef 0.3 saved, 0.2 given" in err and "kl_coef" not in err
    # The pipeline skips finished stages, so it refuses any change and says which stage to run.
    assert text("pipeline", out, "--rm-epochs=3") == 2
    err = capsys.readouterr().err
    assert "--rm-epochs 2 saved, 3 given" in err and f"prefenv text rm --out {out}" in err
    # The seed shapes every stage and the stored labels: no stage may change it.
    assert text("ppo", out, "--seed=1") == 2
    assert "--seed 0 saved, 1 given" in capsys.readouterr().err
    assert (out / "text_config.json").read_bytes() == saved  # nothing changed
    assert (out / "sft" / "stage.json").is_file()


def test_overwrite_clears_an_old_run_and_starts_again(tmp_path, capfd) -> None:
    out = tmp_path / "run"
    old = TextPipelineConfig(**{**TINY, "seed": 1})
    (out / "ppo" / "logs").mkdir(parents=True)
    (out / "text_config.json").write_text(json.dumps(old.to_dict()))
    with ComparisonStore(out / "comparisons.sqlite"):
        pass
    events = out / "ppo" / "logs" / "events.out.tfevents.1700000000.host.1.0"
    for path in (events, out / "comparisons.jsonl", out / "summary.md", out / "summary.json",
                 out / "eval.png", out / "comparisons.sqlite-wal", out / "stale" / "ppo" / "x"):  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    (out / "notes.txt").write_text("the user's own file")
    assert text("base", out) == 2  # another seed: refused, and the message says how out
    err = capfd.readouterr().err
    assert "--seed 1 saved, 0 given" in err and "--overwrite" in err and "another --out" in err
    assert events.exists()

    assert text("base", out, "--overwrite") == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    left = {p.relative_to(out).as_posix() for p in out.iterdir()}
    assert left == {"base", "text_config.json", "notes.txt"}
    assert json.loads((out / "text_config.json").read_text())["seed"] == 0
    assert (out / "base" / "stage.json").is_file()


def test_a_failed_first_start_leaves_no_folder(tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_model"
    assert text("pipeline", tmp_path / "a", "--base-model", str(missing)) == 2
    err = capsys.readouterr().err
    assert "--base-model needs a local model directory written by save_pretrained" in err
    assert f"{missing} is not one" in err and not (tmp_path / "a").exists()
    # A folder that looks like a model but does not load fails inside the base stage.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    assert text("base", tmp_path / "b", "--base-model", str(broken)) == 2
    err = capsys.readouterr().err
    assert f"--base-model {broken} does not load" in err and not (tmp_path / "b").exists()
    assert text("pipeline", tmp_path / "c", "--task", "poetry") == 2
    assert "--task" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert text("rm", tmp_path / "d", "--teacher", "verbos") == 2
    assert "--teacher 'verbos'" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert text("pipeline", tmp_path / "e", "--queries=0") == 2
    assert "--queries must be >= 1" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_overwrite_with_a_bad_base_model_keeps_the_old_run(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "text_config.json").write_text(json.dumps(TextPipelineConfig(**TINY).to_dict()))
    (out / "summary.md").write_text("old")
    assert text("pipeline", out, "--overwrite", "--base-model", str(tmp_path / "nothing")) == 2
    assert "--base-model" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == "old" and (out / "text_config.json").is_file()


def test_every_setting_has_the_stage_that_reads_it_first() -> None:
    assert set(READ_FIRST_BY) == {f.name for f in dataclasses.fields(TextPipelineConfig)}
