#!/usr/bin/env bash
# Runs every text stage (base, sft, rm, ppo, dpo, grpo) once on a GPU with --device cuda
# --dtype bfloat16 and writes a Markdown table: stage, seconds, peak GPU memory
# (torch.cuda.max_memory_allocated, reset before each stage).
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR] [BASE_MODEL_DIR]
#   OUT_DIR         run folder and table (default benchmarks/out/gpu_check); the table is
#                   OUT_DIR/gpu_check.md
#   BASE_MODEL_DIR  a local causal LM folder (save_pretrained); default: the tiny GPT-2
#                   prefenv builds. LORA_R=8 in the environment also runs the stages with LoRA.
# Exits 1 with a message when no CUDA device is visible.
set -euo pipefail
OUT="${1:-benchmarks/out/gpu_check}"
BASE="${2:-}"
python - "$OUT" "$BASE" "${LORA_R:-0}" <<'PY'
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device is visible (torch.cuda.is_available() is False): "
             "run it on a machine with a GPU")

from prefenv.app.text_runs import TextPipelineConfig, run_stage

out, base, lora_r = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
config = TextPipelineConfig(
    base_model=base, device="cuda", dtype="bfloat16", lora_r=lora_r, base_train_steps=50,
    sft_steps=20, sft_demos=320, queries=128, rm_epochs=2, ppo_steps=1536, n_envs=16,
    dpo_epochs=1, grpo_steps=2, group_size=4, eval_prompts=16, torch_threads=4,
)
rows = []
for stage in ("base", "sft", "rm", "ppo", "dpo", "grpo"):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_stage(stage, config, out, overwrite=stage == "base")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20
    rows.append(f"| {stage} | {seconds:.1f} | {peak:.0f} |")
    print(rows[-1], flush=True)
table = "\n".join([
    f"GPU check on {torch.cuda.get_device_name()} (--device cuda --dtype bfloat16, "
    f"--lora-r {lora_r}, base {base or 'tiny default GPT-2'})", "",
    "| stage | seconds | peak GPU memory (MiB) |", "|---|---:|---:|", *rows, "",
])
(out / "gpu_check.md").write_text(table)
print(table)
PY
