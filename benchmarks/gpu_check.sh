#!/usr/bin/env bash
# Runs every text stage (base, sft, rm, ppo, dpo, grpo, rloo, eval) once on a GPU with
# --device cuda and writes a Markdown table: stage, seconds, peak GPU memory
# (torch.cuda.max_memory_allocated, reset before each stage), where each stage's models sat and
# in which precision, and the stage's headline numbers.
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR] [BASE_MODEL_DIR]
#   OUT_DIR         run folder and table (default benchmarks/out/gpu_check); the table is
#                   OUT_DIR/gpu_check.md
#   BASE_MODEL_DIR  a local causal LM folder (save_pretrained); default: the tiny GPT-2
#                   prefenv builds. `SHAPE=12x768` in the environment instead builds a random GPT-2
#                   of that many layers x width (12x768: GPT-2 small's shape, ~90M parameters
#                   over prefenv's tokenizer) in OUT_DIR/base_model and starts from it.
#   LORA_R=8        also trains LoRA adapters in sft, ppo, dpo, grpo and rloo.
#   DTYPE=float32   the precision (default bfloat16).
# Exits 1 with a message when no CUDA device is visible.
set -euo pipefail
OUT="${1:-benchmarks/out/gpu_check}"
BASE="${2:-}"
python - "$OUT" "$BASE" "${LORA_R:-0}" "${DTYPE:-bfloat16}" "${SHAPE:-}" <<'PY'
import json
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device is visible (torch.cuda.is_available() is False): "
             "run it on a machine with a GPU")

from prefenv.app.text_runs import TextPipelineConfig, run_stage

out, base, lora_r, dtype, shape = (Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3]),
                                   sys.argv[4], sys.argv[5])
if shape:
    from envs.text import default_tokenizer, tiny_gpt2_config
    from transformers import GPT2LMHeadModel

    layers, width = (int(n) for n in shape.split("x"))
    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(len(tokenizer), n_layer=layers, n_embd=width,
                                             n_head=max(1, width // 64)))
    base = str(out / "base_model")
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
config = TextPipelineConfig(
    base_model=base, device="cuda", dtype=dtype, lora_r=lora_r, base_train_steps=50,
    sft_steps=20, sft_demos=320, queries=128, rm_epochs=2, ppo_steps=1536, n_envs=16,
    dpo_epochs=1, grpo_steps=2, group_size=4, eval_prompts=16, torch_threads=4,
)
HEADLINE = {"base": ("n_params",), "sft": ("first_loss", "final_loss"),
            "rm": ("val_accuracy", "true_order_accuracy"), "ppo": ("last_true_score", "last_kl_to_ref"),
            "dpo": ("first_loss", "final_loss"), "grpo": ("completions_per_second", "last_reward", "last_kl"),
            "rloo": ("completions_per_second", "last_reward", "last_kl")}
rows = []
for stage in ("base", "sft", "rm", "ppo", "dpo", "grpo", "rloo", "eval"):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_stage(stage, config, out, overwrite=stage == "base")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20
    if stage == "eval":
        numbers = ", ".join(f"{name} {r['true_score']:+.3f} (KL {r['kl_to_ref']:.2f})"
                            for name, r in result["eval"].items())
    else:
        numbers = ", ".join(f"{key} {result[key]:.4g}" for key in HEADLINE[stage]
                            if isinstance(result.get(key), int | float))
    rows.append(f"| {stage} | {seconds:.1f} | {peak:.0f} | {numbers} |")
    print(rows[-1], flush=True)
table = "\n".join([
    f"GPU check on {torch.cuda.get_device_name()}, torch {torch.__version__} "
    f"(--device cuda --dtype {dtype}, --lora-r {lora_r}, base {base or 'tiny default GPT-2'})",
    "", "| stage | seconds | peak GPU memory (MiB) | numbers |", "|---|---:|---:|---|", *rows, "",
])
(out / "gpu_check.md").write_text(table)
print(table)
PY
