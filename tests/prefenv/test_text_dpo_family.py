"""The text pipeline's dpo stage with the DPO family: ``--dpo-loss``, ``--dpo-uncertainty``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefenv.app.cli import main
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline

TINY = {
    "base_train_steps": 20, "sft_steps": 8, "sft_demos": 100, "queries": 48, "rm_epochs": 2,
    "max_new_tokens": 6, "dpo_epochs": 1, "eval_prompts": 12, "rm_ensemble": 2,
}  # fmt: skip
ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder with base, sft and a 2-member reward-model ensemble."""
    out = tmp_path_factory.mktemp("text_dpo_family")
    run_pipeline(TextPipelineConfig(**TINY), out, stages=("base", "sft", "rm"))
    return out


def _changed_from_sft(out: Path) -> bool:
    sft, dpo = (load_file(out / name / "model.safetensors") for name in ("sft", "dpo"))
    return any(not torch.equal(dpo[k], sft[k]) for k in sft)


def test_dpo_stage_trains_kto_with_ensemble_weights_then_redoes_itself_for_ipo(run, capsys):
    command = ["text", "dpo", "--out", str(run), *ARGS]
    assert main([*command, "--dpo-loss", "kto", "--dpo-uncertainty"]) == 0
    stage = json.loads((run / "dpo" / "stage.json").read_text())
    assert stage["loss"] == "kto" and stage["pairs"] > 0
    assert 0 <= stage["relabelled"] <= stage["pairs"]
    assert 0 < stage["min_weight"] <= 1 <= stage["max_weight"]  # weights average 1
    assert 0 < stage["first_loss"] < 1  # KTO's losses lie in (0, lambda) = (0, 1), weighted
    assert _changed_from_sft(run)
    # --dpo-loss is first read by the dpo stage: changing it redoes that stage (the old output
    # moves to stale/), while the pipeline, which keeps a folder's settings, refuses it
    assert main([*command, "--dpo-loss", "ipo"]) == 0
    assert json.loads((run / "dpo" / "stage.json").read_text())["loss"] == "ipo"
    assert (run / "stale" / "dpo" / "stage.json").is_file()
    capsys.readouterr()
    assert main(["text", "pipeline", "--out", str(run), *ARGS, "--dpo-loss", "simpo"]) == 2
    assert "--dpo-loss ipo saved, simpo given" in capsys.readouterr().err


def test_bad_dpo_settings_are_named(run, capsys):
    capsys.readouterr()
    single = [a for a in ARGS if not a.startswith("--rm-ensemble")]
    assert main(["text", "dpo", "--out", str(run), *single, "--dpo-uncertainty"]) == 2
    assert "--dpo-uncertainty weighs pairs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown --dpo-loss 'orpo'"):
        TextPipelineConfig(dpo_loss="orpo")
    with pytest.raises(ValueError, match="--dpo-label-smoothing"):
        TextPipelineConfig(dpo_label_smoothing=0.5)
