"""--device, --dtype and --lora-r on the text stages at tiny size (CPU): the plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefenv.app.text_runs import TextPipelineConfig, run_pipeline, run_stage

pytest.importorskip("peft")

TINY = {
    "base_train_steps": 20, "sft_steps": 4, "sft_demos": 64, "queries": 32, "rm_epochs": 1,
    "max_new_tokens": 6, "eval_prompts": 8, "grpo_steps": 1, "group_size": 2, "dpo_epochs": 1,
    "device": "auto", "lora_r": 4, "lora_alpha": 8.0, "ppo_steps": 3 * 4 * 6, "n_envs": 4,
}  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_lora_stages_train_adapters_and_save_them_in_peft_format(tmp_path) -> None:
    config = TextPipelineConfig(**TINY)
    run_pipeline(config, tmp_path, stages=("base", "sft", "rm", "ppo", "dpo", "grpo"))
    base = weights(tmp_path / "base")
    for stage in ("sft", "ppo", "dpo", "grpo"):
        adapter = tmp_path / stage / "adapter"
        assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
        assert (adapter / "adapter_model.safetensors").is_file()
        merged = weights(tmp_path / stage)  # the full model, adapters merged in
        assert merged.keys() == base.keys()
    sft, dpo = weights(tmp_path / "sft"), weights(tmp_path / "dpo")
    # Adapters touch the attention and MLP projections only: embeddings are the base's.
    assert torch.equal(sft["transformer.wte.weight"], base["transformer.wte.weight"])
    assert not torch.equal(sft["transformer.h.0.attn.c_attn.weight"],
                           base["transformer.h.0.attn.c_attn.weight"])  # fmt: skip
    assert not torch.equal(dpo["transformer.h.0.mlp.c_fc.weight"],
                           sft["transformer.h.0.mlp.c_fc.weight"])  # fmt: skip
    ppo = weights(tmp_path / "ppo")  # PPO-KL trained adapters on SFT, its reference
    assert torch.equal(ppo["transformer.wte.weight"], sft["transformer.wte.weight"])
    assert not torch.equal(ppo["transformer.h.1.mlp.c_fc.weight"],
                           sft["transformer.h.1.mlp.c_fc.weight"])  # fmt: skip


def test_bfloat16_on_cpu_runs_sft_rm_and_eval_and_keeps_the_precision(tmp_path) -> None:
    config = TextPipelineConfig(**{**TINY, "lora_r": 0, "dtype": "bfloat16", "device": "cpu"})
    run_pipeline(config, tmp_path, stages=("base", "sft", "rm", "eval"))
    assert weights(tmp_path / "base")["transformer.wte.weight"].dtype == torch.float32
    assert weights(tmp_path / "sft")["transformer.wte.weight"].dtype == torch.bfloat16
    summary = json.loads((tmp_path / "sft" / "stage.json").read_text())
    assert all(map(torch.isfinite, torch.tensor([summary["first_loss"], summary["final_loss"]])))
    # The reward model keeps float32 weights (it computes in bfloat16 under autocast).
    rm_weights = weights(tmp_path / "reward_model")
    assert {w.dtype for w in rm_weights.values()} == {torch.float32}
    rm = json.loads((tmp_path / "reward_model" / "stage.json").read_text())
    assert 0 <= rm["true_order_accuracy"] <= 1 and rm["score_std"] > 0
    sft_eval = json.loads((tmp_path / "summary.json").read_text())["eval"]["sft"]
    assert sft_eval["n"] == TINY["eval_prompts"] and abs(sft_eval["kl_to_ref"]) < 1e-6


def test_reward_model_in_bfloat16_scores_close_to_float32_and_trains_float32_weights() -> None:
    from envs.text.reward_model import TextRewardModel

    prompts, completions = ["a good film", "the plot"] * 4, ["great fun", "dull and slow"] * 4
    reference = TextRewardModel.build(seed=3)
    mixed = TextRewardModel.build(seed=3).place("cpu", torch.bfloat16)
    full, half = reference(prompts, completions), mixed(prompts, completions)
    assert half.dtype == torch.float32 and not torch.equal(full, half)  # computed in bf16
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)
    half.sum().backward()
    grads = [p.grad for p in mixed.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert mixed.place("cpu").compute_dtype is None  # back to float32 compute


def test_bad_device_settings_are_refused(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="--device 'tpu'"):
        TextPipelineConfig(device="tpu")
    with pytest.raises(ValueError, match="--lora-r must be >= 0"):
        TextPipelineConfig(lora_r=-1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_stage("base", TextPipelineConfig(**TINY), tmp_path)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        run_stage("sft", TextPipelineConfig(**{**TINY, "device": "cuda"}), tmp_path)
