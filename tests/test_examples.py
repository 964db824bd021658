"""Every example runs end to end at tiny size (a user copies these: they must not rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY_ARGS = {
    "wrap_custom_env.py": [
        "--episodes", "10", "--queries", "60", "--epochs", "5", "--steps", "2000",
        "--train-queries", "20",
    ],
    "synthetic_teachers.py": ["--pairs", "60"],
    "fit_reward_model.py": ["--queries", "60", "--epochs", "5"],
    "ppo_kl_mujoco_preferences.py": [
        "--env", "prefenv/Reacher-v0", "--steps", "1600", "--queries", "20", "--rounds", "1",
        "--n-envs", "2", "--n-steps", "100", "--segment-length", "25",
    ],
    "sb3_sac_preferences.py": [
        "--steps", "400", "--queries", "16", "--rounds", "1", "--n-envs", "2",
        "--learning-starts", "100",
    ],
    "bc_reference_kl_leash.py": ["--demo-steps", "1024", "--steps", "1024", "--queries", "40"],
    "recommendation_ppo_kl.py": [
        "--steps", "2048", "--queries", "20", "--rounds", "1", "--n-envs", "4", "--n-steps", "64",
        "--initial-steps", "512", "--reward-epochs", "3", "--eval-sessions", "16",
    ],
    "recommendation_proxy_trap.py": [
        "--steps", "3072", "--queries", "16", "--points", "2", "--n-envs", "4", "--n-steps", "64",
        "--initial-steps", "512", "--reward-epochs", "3", "--eval-sessions", "8",
    ],
    "text_rlhf_pipeline.py": [
        "--base-steps", "20", "--sft-steps", "8", "--queries", "40", "--ppo-steps", "96",
        "--n-envs", "4", "--max-new-tokens", "6",
    ],
    "text_dpo.py": [
        "--base-steps", "20", "--sft-steps", "8", "--queries", "40", "--epochs", "1",
        "--rounds", "1", "--round-prompts", "8", "--max-new-tokens", "6",
    ],
    "text_own_model.py": [
        "--sft-steps", "5", "--queries", "40", "--ppo-steps", "48", "--n-envs", "4",
        "--max-new-tokens", "6", "--eval-prompts", "8",
    ],
}  # fmt: skip


def test_every_example_has_tiny_arguments():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY_ARGS)


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_example_runs(name, tmp_path):
    args = list(TINY_ARGS[name])
    if name not in ("wrap_custom_env.py", "bc_reference_kl_leash.py"):
        args += ["--out", str(tmp_path / "out")]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example should tell the user what happened"
