"""prefenv sweep for real: cells in local worker processes and on a local Ray instance.

Each test trains tiny runs (Reacher, 2 envs, a few thousand steps), kills a worker process by its
PID mid-cell, and reruns the finished grid. Marked ``ray`` (``python -m pytest -m ray``): CI runs
them after the default suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefenv.app.sweep import LocalBackend, RayBackend, Sweep
from prefenv.app.sweep_grid import load_grid

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
GRID = """
[sweep]
retries = 2

[base]
env = "prefenv/Reacher-v0"
steps = 4800
initial_steps = 400
rounds = 3
n_envs = 2
n_steps = 100
eval_episodes = 1

[axes]
queries = [24, 48]
seed = [0, 1]
"""
CELLS = ["queries-24_seed-0", "queries-24_seed-1", "queries-48_seed-0", "queries-48_seed-1"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def grid(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return load_grid(path)


def kill_first_worker(out: Path, killed: dict, stop: threading.Event) -> None:
    """Kill (SIGKILL) the process of the first cell seen training: its PID from worker.pid."""
    while not stop.is_set():
        for name in CELLS:
            folder = out / "cells" / name
            if (folder / "worker.pid").is_file() and (folder / "run.json").is_file():
                time.sleep(0.5)  # inside the training loop
                pid = int((folder / "worker.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed.update(cell=name, pid=pid)
                return
        time.sleep(0.05)


def run_killing_one(sweep: Sweep, backend) -> tuple[object, dict]:
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker, args=(sweep.out, killed, stop))
    killer.start()
    try:
        outcome = sweep.run(backend, progress=False)
    finally:
        stop.set()
        killer.join()
    return outcome, killed


def check_grid(sweep: Sweep, outcome, killed: dict) -> None:
    assert not outcome.failed and sorted(outcome.done) == sorted(CELLS)
    result = json.loads((sweep.out / "results" / f"{killed['cell']}.json").read_text())
    assert result["attempts"] == 2, "the killed cell ran again"
    assert int((sweep.out / "cells" / killed["cell"] / "worker.pid").read_text()) != killed["pid"]
    for name in CELLS:
        summary = json.loads((sweep.out / "cells" / name / "summary.json").read_text())
        assert summary["timesteps"] >= 4800 and summary["labels_used"] in (24, 48)
    table = (sweep.out / "results.md").read_text()
    assert re.search(r"\| 24 \| 2 \| -?\d+\.\d ± \d+\.\d \|", table), table
    assert re.search(r"\| 48 \| 2 \| -?\d+\.\d ± \d+\.\d \|", table), table
    assert (sweep.out / "figure.png").is_file()


def rerun_skips_everything(sweep: Sweep, backend) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in (sweep.out / "results").iterdir()}
    outcome = Sweep(sweep.grid, sweep.out).run(backend, progress=False)
    assert sorted(outcome.skipped) == sorted(CELLS)
    assert {p: p.stat().st_mtime_ns for p in (sweep.out / "results").iterdir()} == stamps


def test_local_worker_processes_run_the_grid_retry_a_killed_cell_and_skip_on_rerun(tmp_path):
    sweep = Sweep(grid(tmp_path), tmp_path / "out")
    backend = LocalBackend(workers=2)
    outcome, killed = run_killing_one(sweep, backend)
    check_grid(sweep, outcome, killed)
    rerun_skips_everything(sweep, backend)


def test_ray_runs_the_grid_retries_a_killed_worker_and_skips_on_rerun(tmp_path, local_ray):
    sweep = Sweep(grid(tmp_path), tmp_path / "out")
    backend = RayBackend()
    assert not backend.started  # the test's own instance is used, and left running
    outcome, killed = run_killing_one(sweep, backend)
    check_grid(sweep, outcome, killed)
    log = (sweep.out / "cells" / killed["cell"] / "cell.log").read_text()
    assert log.count("--- ") == 2  # two attempts, the second resumed in the same folder
    rerun_skips_everything(sweep, backend)


def readme_sweep_command() -> str:
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines()
                if line.strip().startswith("prefenv sweep examples/")]  # fmt: skip
    assert len(commands) == 1, "README shows one command that runs the small grid"
    return commands[0]


def test_the_readme_sweep_command_runs_the_small_grid_on_local_ray(tmp_path):
    pytest.importorskip("ray")
    command = readme_sweep_command()
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "sweep_quick.toml", tmp_path / "examples")
    env = {**os.environ, "MUJOCO_GL": "egl"}
    done = subprocess.run(
        [sys.executable, "-m", "prefenv.app.cli", *shlex.split(command)[1:]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "sweeps" / "sweep_quick"
    table = (out / "results.md").read_text()
    assert "| 50 | 2 |" in table and "| 200 | 2 |" in table and "twin_seed-1:" in table
    assert "eval_deterministic_return / twin" in table and (out / "figure.png").is_file()
    assert "on Ray" in done.stdout


TEXT_GRID = """
[sweep]
kind = "text"

[base]
base_train_steps = 20
sft_steps = 8
sft_demos = 100
queries = 48
rm_epochs = 2
ppo_steps = 72
n_envs = 4
max_new_tokens = 6
dpo_epochs = 1
eval_prompts = 12

[axes]
kl_coef = [0.1, 0.3]
seed = [0]
"""


def test_a_text_grid_runs_each_cell_as_a_text_pipeline(tmp_path):
    pytest.importorskip("transformers")
    path = tmp_path / "text.toml"
    path.write_text(TEXT_GRID)
    sweep = Sweep(load_grid(path), tmp_path / "out")
    outcome = sweep.run(LocalBackend(workers=2), progress=False)
    assert not outcome.failed and len(outcome.done) == 2
    for name in ("kl_coef-0.1_seed-0", "kl_coef-0.3_seed-0"):
        summary = json.loads((sweep.out / "cells" / name / "summary.json").read_text())
        result = json.loads((sweep.out / "results" / f"{name}.json").read_text())
        assert result["summary"]["eval.ppo.true_score"] == summary["eval"]["ppo"]["true_score"]
        config = json.loads((sweep.out / "cells" / name / "text_config.json").read_text())
        assert config["ppo"]["kl_coef"] == float(name.split("-")[1].split("_")[0])
    table = (sweep.out / "results.md").read_text()
    assert "| 0.1 | 1 |" in table and "eval.ppo.kl_to_ref" in table


def test_a_cell_the_ray_cluster_cannot_hold_is_refused_not_queued_forever(tmp_path, local_ray):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace("retries = 2", "retries = 2\ngpus = 1"))
    with pytest.raises(ValueError, match="gpus = 1 .* 0 GPUs: lower them"):
        Sweep(load_grid(path), tmp_path / "out").run(RayBackend(), progress=False)
    assert not (tmp_path / "out" / "results").exists()  # nothing ran, nothing recorded
