"""The grpo and rloo text stages at tiny size: run by name on a run folder, evaluated by eval."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefenv.app.cli import main
from prefenv.app.text_config import PIPELINE, STAGES
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline, run_stage

TINY = {
    "base_train_steps": 20, "sft_steps": 8, "sft_demos": 100, "queries": 48, "rm_epochs": 2,
    "max_new_tokens": 6, "eval_prompts": 12, "grpo_steps": 2, "group_size": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text_grpo")
    run_pipeline(TextPipelineConfig(**TINY), out, stages=("base", "sft", "rm"))
    return out


def test_grpo_and_rloo_train_from_sft_and_eval_compares_them(run) -> None:
    config = TextPipelineConfig(**TINY)
    sft = load_file(run / "sft" / "model.safetensors")
    for algo in ("grpo", "rloo"):
        metrics = run_stage(algo, config, run)
        assert metrics["algo"] == algo and metrics["steps"] == TINY["grpo_steps"]
        # 2 steps x 8 prompts x G 4 completions
        assert metrics["completions"] == 2 * 8 * 4
        weights = load_file(run / algo / "model.safetensors")
        assert any(not torch.equal(weights[k], sft[k]) for k in sft), algo
        with (run / algo / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
        assert len(rows) == TINY["grpo_steps"] and float(rows[0]["kl"]) >= 0
    summary = run_stage("eval", config, run)
    assert {"sft", "grpo", "rloo"} <= set(summary["eval"])
    assert summary["stages"]["rloo"]["algo"] == "rloo"
    assert "| grpo |" in (run / "summary.md").read_text()


def test_the_pipeline_leaves_grpo_and_rloo_to_be_named() -> None:
    assert {"grpo", "rloo"} <= set(STAGES) and not {"grpo", "rloo"} & set(PIPELINE)
    assert [s for s in STAGES if s in PIPELINE] == list(PIPELINE)  # same order


def test_cli_runs_rloo_and_names_a_bad_setting(run, capsys) -> None:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["text", "rloo", "--out", str(run), *args]) == 0
    assert json.loads(capsys.readouterr().out)["algo"] == "rloo"
    assert main(["text", "grpo", "--out", str(run), *args, "--group-size=1"]) == 2
    assert "--group-size >= 2" in capsys.readouterr().err
    assert main(["text", "grpo", "--out", str(run), *args, "--grpo-iterations=0"]) == 2
    assert "--grpo-iterations must be >= 1, got 0" in capsys.readouterr().err


def test_grpo_iterations_reach_the_trainer() -> None:
    from prefenv.app.text_grpo import group_rl_config

    config = TextPipelineConfig(grpo_iterations=3, grpo_learning_rate=1e-4)
    assert group_rl_config(config, "rloo").num_iterations == 3
    assert group_rl_config(config, "grpo").optim.learning_rate == 1e-4


def test_rloo_takes_changed_grpo_settings_and_marks_grpo_stale(tmp_path) -> None:
    from prefenv.app.text_config import accept_settings
    from prefenv.errors import CheckpointError

    accept_settings(TextPipelineConfig(), tmp_path, None)
    for stage in ("grpo", "rloo"):  # finished outputs of the old settings
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "stage.json").write_text("{}")
    # rloo reads --grpo-learning-rate too, but not grpo's model: it may run with a new value...
    changed = TextPipelineConfig(grpo_learning_rate=2e-4, group_size=4)
    accept_settings(changed, tmp_path, "rloo")
    saved = json.loads((tmp_path / "text_config.json").read_text())
    assert (saved["grpo_learning_rate"], saved["group_size"]) == (2e-4, 4)
    # ...and grpo's model, trained with the old value, no longer matches the folder's settings.
    assert (
        not (tmp_path / "grpo").exists() and (tmp_path / "stale" / "grpo" / "stage.json").exists()
    )
    assert (tmp_path / "stale" / "rloo" / "stage.json").exists()
    # A setting an earlier stage rloo depends on stays refused.
    with pytest.raises(CheckpointError, match="--dpo-beta: first read by the dpo stage"):
        accept_settings(dataclasses.replace(changed, dpo_beta=0.3), tmp_path, "rloo")


def test_the_pipeline_resumes_a_folder_whose_unrun_grpo_settings_changed(tmp_path) -> None:
    from prefenv.app.text_config import accept_settings
    from prefenv.errors import CheckpointError

    old = TextPipelineConfig(grpo_beta=0.04, grpo_learning_rate=5e-5, grpo_iterations=1)
    accept_settings(old, tmp_path, None)
    accept_settings(TextPipelineConfig(), tmp_path, None)  # e.g. saved under older defaults
    assert json.loads((tmp_path / "text_config.json").read_text())["grpo_beta"] == 0.3
    (tmp_path / "rloo").mkdir()  # a model trained with the saved settings: they now matter
    with pytest.raises(CheckpointError, match="--grpo-beta"):
        accept_settings(old, tmp_path, None)
    with pytest.raises(CheckpointError, match="--dpo-beta"):  # the pipeline's own: unchanged
        accept_settings(TextPipelineConfig(dpo_beta=0.3), tmp_path, None)
