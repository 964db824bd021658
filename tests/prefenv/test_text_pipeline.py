"""The text RLHF pipeline end to end at tiny size: stages, run folder, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefenv.app.cli import main
from prefenv.app.text_config import TEXT_PPO
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline, run_stage
from prefenv.jsonl import import_jsonl

TINY = {
    "base_train_steps": 20, "sft_steps": 8, "sft_demos": 100, "queries": 48, "rm_epochs": 2,
    "ppo_steps": 3 * 4 * 6, "n_envs": 4, "max_new_tokens": 6, "dpo_epochs": 1,
    "eval_prompts": 12,
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("text_run")
    summary = run_pipeline(TextPipelineConfig(**TINY), out)
    return out, summary


def test_pipeline_writes_every_stage_and_a_summary(run) -> None:
    out, summary = run
    for folder in ("base", "sft", "reward_model", "ppo", "dpo"):
        assert (out / folder / "stage.json").is_file(), folder
    for folder in ("base", "sft", "ppo", "dpo"):  # Hugging Face model folders
        assert (out / folder / "config.json").is_file() and (
            out / folder / "tokenizer.json"
        ).is_file()
    assert set(summary["eval"]) == {"sft", "ppo", "dpo"}
    sft = summary["eval"]["sft"]
    assert sft["kl_to_ref"] == pytest.approx(0.0, abs=1e-4)  # SFT against itself
    # Three tiny PPO iterations move the policy only slightly: its Monte-Carlo KL estimate on 12
    # samples may fall on either side of 0, so check that PPO and DPO changed the weights.
    assert summary["eval"]["dpo"]["kl_to_ref"] != 0
    assert np.isfinite(summary["eval"]["ppo"]["kl_to_ref"])
    sft_weights = load_file(out / "sft" / "model.safetensors")
    for stage in ("ppo", "dpo"):
        weights = load_file(out / stage / "model.safetensors")
        assert any(not torch.equal(weights[k], sft_weights[k]) for k in sft_weights), stage
    for name in (
        "summary.md",
        "eval.png",
        "ppo/ppo_monitor.png",
        "ppo/monitor.csv",
        "ppo/samples.jsonl",
    ):
        assert (out / name).stat().st_size > 0, name
    stored = import_jsonl(out / "comparisons.jsonl")
    assert 0 < len(stored) <= TINY["queries"]
    assert all(c.segment0.context["prompt"] for c in stored)
    rm = json.loads((out / "reward_model" / "stage.json").read_text())
    assert rm["comparisons"] == TINY["queries"] and 0 <= rm["true_order_accuracy"] <= 1
    ppo = json.loads((out / "ppo" / "stage.json").read_text())
    assert ppo["timesteps"] >= TINY["ppo_steps"]


def test_a_finished_pipeline_is_not_redone_and_settings_are_kept(run) -> None:
    out, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    run_pipeline(TextPipelineConfig(**TINY), out)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamps
    with pytest.raises(ValueError, match="started with other settings"):
        run_pipeline(TextPipelineConfig(**{**TINY, "queries": 99}), out)
    # A folder written before a field existed resumes when the field keeps its default, and one
    # written before the PPO-KL settings were composed (flat kl_* keys) keeps its KL settings.
    saved = json.loads((out / "text_config.json").read_text())
    del saved["reward_clip"], saved["ppo"]["kl_estimator"]
    (out / "text_config.json").write_text(json.dumps(saved))
    run_pipeline(TextPipelineConfig(**TINY), out, stages=("base",))
    legacy = {k: v for k, v in saved.items() if k != "ppo"}
    (out / "text_config.json").write_text(json.dumps({**legacy, "kl_coef": 0.1}))
    with pytest.raises(ValueError, match="--kl-coef 0.1 saved, 0.3 given"):
        run_pipeline(TextPipelineConfig(**TINY), out, stages=("base",))
    lower = TextPipelineConfig(**TINY, ppo=dataclasses.replace(TEXT_PPO, kl_coef=0.1))
    run_pipeline(lower, out, stages=("base",))
    (out / "text_config.json").write_text(json.dumps(saved))


def test_a_stage_needs_its_inputs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="prefenv text sft"):
        run_stage("rm", TextPipelineConfig(**TINY), tmp_path)
    with pytest.raises(ValueError, match="unknown text task"):
        TextPipelineConfig(task="poetry")


def test_cli_runs_one_stage_and_eval(run, tmp_path, capsys) -> None:
    out, _ = run
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["text", "eval", "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert "ppo: true score" in printed and "summary.md" in printed
    assert main(["text", "sft", "--out", str(tmp_path / "fresh"), *args]) == 2  # no base yet
    # The PPO-KL options reach the composed PPOKLConfig (here: a change the run folder refuses).
    capsys.readouterr()
    assert main(["text", "eval", "--out", str(out), *args, "--kl-coef=0.2"]) == 2
    err = capsys.readouterr().err
    assert "--kl-coef 0.3 saved, 0.2 given" in err and "ppo.kl_coef" not in err


def test_reward_model_and_dpo_train_on_an_imported_preference_file(run, tmp_path) -> None:
    import shutil

    out, _ = run
    fresh = tmp_path / "imported"
    for folder in ("base", "sft"):
        shutil.copytree(out / folder, fresh / folder)
    exported = import_jsonl(out / "comparisons.jsonl")
    config = TextPipelineConfig(**{**TINY, "comparisons_file": str(out / "comparisons.jsonl")})
    metrics = run_pipeline(config, fresh, stages=("rm", "dpo"))
    assert metrics["pairs"] == sum(c.label != 0.5 for c in exported)  # DPO skips ties
    rm = json.loads((fresh / "reward_model" / "stage.json").read_text())
    assert rm["comparisons"] == len(exported)
