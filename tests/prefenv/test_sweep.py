"""prefenv sweep: grid files, cells, twins, retries, reruns and the report (no processes here).

The runs in real worker processes and on a local Ray instance are in ``test_sweep_ray.py``.
"""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest

from prefenv.app.cli import main
from prefenv.app.sweep import CellFailure, Sweep
from prefenv.app.sweep_grid import GridError, load_grid
from prefenv.app.sweep_report import write_report

BASE = {"env": "prefenv/Reacher-v0", "steps": 1600, "initial_steps": 400, "rounds": 2}


def write(tmp_path, text, name="grid.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


class Handle:
    """A submitted cell (hashed by identity, as a process or a Ray ref)."""

    def __init__(self, cell):
        self.cell = cell


class FakeBackend:
    """Runs nothing: each cell 'returns' figures made from its settings; some fail first."""

    def __init__(self, failures=None, capacity=2):
        self.capacity = capacity
        self.failures = dict(failures or {})
        self.submitted: list[str] = []

    def submit(self, cell, folder, cpus, gpus):
        self.submitted.append(cell.name)
        return Handle(cell)

    def poll(self, handles):
        ended = []
        for handle in handles:
            cell = handle.cell
            if self.failures.get(cell.name, 0) > 0:
                self.failures[cell.name] -= 1
                ended.append((handle, CellFailure("worker exited with -9")))
                continue
            settings = cell.settings
            value = 100.0 if cell.kind == "twin" else settings["queries"] / 10 + settings["seed"]
            ended.append((handle, {"eval_deterministic_return": value,
                                   "eval_sampled_return": value / 2}))  # fmt: skip
        return ended

    def close(self):
        pass


GRID = """
[sweep]
twin = true
retries = 1

[base]
env = "prefenv/Reacher-v0"
steps = 1600
initial_steps = 400
rounds = 2

[axes]
queries = [50, 250]
seed = [0, 1]
"""


def test_a_grid_makes_the_product_of_its_axes_and_one_twin_per_agent(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    cells = grid.cells()
    names = [c.name for c in cells]
    assert names == ["twin_seed-0", "twin_seed-1", "queries-50_seed-0", "queries-50_seed-1",
                     "queries-250_seed-0", "queries-250_seed-1"]  # fmt: skip
    by_name = {c.name: c for c in cells}
    assert by_name["queries-250_seed-1"].settings == {**BASE, "queries": 250, "seed": 1}
    assert by_name["queries-250_seed-1"].twin == "twin_seed-1"
    # the twin keeps the settings that shape the agent, not the labels
    assert by_name["twin_seed-1"].settings == {
        "env": "prefenv/Reacher-v0",
        "steps": 1600,
        "seed": 1,
    }


def test_arms_are_an_axis_and_an_arm_that_changes_the_agent_gets_its_own_twin(tmp_path):
    text = GRID + "\n[arms.off]\n[arms.on]\nsurf = true\n[arms.big]\nhparams = {batch_size = 64}\n"
    cells = load_grid(write(tmp_path, text)).cells()
    names = [c.name for c in cells]
    assert "arm-on_queries-50_seed-0" in names and "arm-off_queries-50_seed-0" in names
    twins = {c.name: c.twin for c in cells if c.kind == "train"}
    assert twins["arm-on_queries-50_seed-0"] == twins["arm-off_queries-50_seed-0"] == "twin_seed-0"
    assert twins["arm-big_queries-50_seed-0"] == "twin_arm-big_seed-0"
    assert len(cells) == 3 * 2 * 2 + 2 * 2  # 12 cells; twins: seed x (shared, big)


def test_yaml_grids_read_as_toml_ones(tmp_path):
    yaml_text = """
sweep: {twin: true, retries: 1}
base: {env: prefenv/Reacher-v0, steps: 1600, initial_steps: 400, rounds: 2}
axes: {queries: [50, 250], seed: [0, 1]}
"""
    toml_cells = load_grid(write(tmp_path, GRID)).cells()
    assert load_grid(write(tmp_path, yaml_text, "grid.yaml")).cells() == toml_cells


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[axes]\nquerys = [1, 2]\n", "did you mean 'queries'"),
        ("[sweeep]\nretries = 1\n", "did you mean [sweep]"),
        ("[sweep]\nretry = 1\n", "did you mean 'retries'"),
        ("[base]\nseed = 1\n[axes]\nseed = [0, 1]\n", "set in both [base] and [axes]"),
        ("[axes]\nseed = []\n", "non-empty list"),
        ("[axes]\nseed = [1, 1]\n", "repeats a value"),
        ("[axes]\nseed = [0]\n[arms.a]\nseed = 3\n", "which is an axis"),
        ("[sweep]\nkind = 'text'\ntwin = true\n", "twin = true needs kind = 'train'"),
        ("[sweep]\nx = 'queries'\n[axes]\nseed = [0]\n", "is not an axis"),
        ("[sweep]\nx = 'seed'\n[axes]\nseed = [0, 1]\n", "averages over seeds"),
        ("[sweep]\nx = 'teacher'\n[axes]\nteacher = ['oracle', 'noisy']\n", "needs numeric"),
        ("[axes\nseed = [0]\n", "cannot read grid file"),
    ],
)
def test_a_bad_grid_file_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(GridError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(write(tmp_path, text))


def test_a_value_no_run_can_use_fails_before_anything_runs(tmp_path):
    grid = load_grid(write(tmp_path, "[axes]\nqueries = [50, 0]\n"))
    with pytest.raises(GridError, match="cell queries-0: .*--queries"):
        Sweep(grid, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_cells_are_retried_then_reported_and_the_rest_finish(tmp_path):
    grid = load_grid(write(tmp_path, GRID))  # retries = 1: two attempts per cell
    backend = FakeBackend(failures={"queries-50_seed-0": 1, "queries-250_seed-1": 5})
    outcome = Sweep(grid, tmp_path / "out").run(backend, progress=False)
    assert backend.submitted.count("queries-50_seed-0") == 2  # failed once, then finished
    assert backend.submitted.count("queries-250_seed-1") == 2  # failed both: reported
    assert set(outcome.failed) == {"queries-250_seed-1"}
    assert len(outcome.done) == 5
    result = json.loads((tmp_path / "out/results/queries-50_seed-0.json").read_text())
    assert result["status"] == "done" and result["attempts"] == 2
    assert "Failed (rerun the sweep to try again): queries-250_seed-1" in outcome.table
    # a rerun runs only what did not finish
    again = FakeBackend()
    outcome = Sweep(grid, tmp_path / "out").run(again, progress=False)
    assert again.submitted == ["queries-250_seed-1"]
    assert not outcome.failed and len(outcome.skipped) == 5


def test_the_table_gives_mean_std_per_seed_and_the_twin_fraction(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    sweep = Sweep(grid, tmp_path / "out")
    sweep.run(FakeBackend(), progress=False)
    table = write_report(sweep)
    # queries 250: seeds 0 and 1 give 25 and 26; the twins 100 -> fractions .25 and .26
    assert "| 250 | 2 | 25.5 ± 0.5 | 25.0, 26.0 | 0.26 ± 0.01 |" in table
    rows = list(csv.DictReader((tmp_path / "out/results.csv").open()))
    assert [r["queries"] for r in rows] == ["50", "250"]
    row = rows[1]
    assert float(row["eval_deterministic_return_mean"]) == pytest.approx(25.5)
    assert float(row["eval_deterministic_return_std"]) == pytest.approx(np.std([25.0, 26.0]))
    assert float(row["eval_sampled_return_twin_fraction_mean"]) == pytest.approx(
        np.mean([12.5 / 50, 13.0 / 50])
    )
    assert (tmp_path / "out/figure.png").stat().st_size > 10_000
    assert "twin_seed-0: eval_deterministic_return 100.0" in table


def test_no_fraction_against_a_twin_that_is_not_positive(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    sweep = Sweep(grid, tmp_path / "out")
    sweep.run(FakeBackend(), progress=False)
    path = tmp_path / "out/results/twin_seed-0.json"
    result = json.loads(path.read_text())
    result["summary"]["eval_deterministic_return"] = -5.0
    path.write_text(json.dumps(result))
    write_report(sweep)
    rows = list(csv.DictReader(open(tmp_path / "out/results.csv")))
    # only seed 1 has a positive twin: one fraction, std 0
    assert float(rows[1]["eval_deterministic_return_twin_fraction_mean"]) == pytest.approx(0.26)
    assert float(rows[1]["eval_deterministic_return_twin_fraction_std"]) == 0.0


def test_a_sweep_folder_refuses_a_grid_with_other_settings_but_takes_new_axis_values(tmp_path):
    Sweep(load_grid(write(tmp_path, GRID)), tmp_path / "out").run(FakeBackend(), progress=False)
    changed = GRID.replace("steps = 1600", "steps = 3200")
    with pytest.raises(GridError, match=r"\[base\] base differs.*another --out"):
        Sweep(load_grid(write(tmp_path, changed)), tmp_path / "out")
    grown = GRID.replace("queries = [50, 250]", "queries = [50, 250, 1000]")
    backend = FakeBackend()
    Sweep(load_grid(write(tmp_path, grown)), tmp_path / "out").run(backend, progress=False)
    assert backend.submitted == ["queries-1000_seed-0", "queries-1000_seed-1"]


def test_two_sweeps_in_one_folder_at_once_are_refused(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    release, entered = threading.Event(), threading.Event()

    class SlowBackend(FakeBackend):
        def poll(self, handles):
            entered.set()
            release.wait(10)
            return super().poll(handles)

    first = threading.Thread(
        target=lambda: Sweep(grid, tmp_path / "out").run(SlowBackend(), progress=False)
    )
    first.start()
    try:
        assert entered.wait(10)
        with pytest.raises(GridError, match="another prefenv sweep is running"):
            Sweep(grid, tmp_path / "out").run(FakeBackend(), progress=False)
    finally:
        release.set()
        first.join()


def test_the_cli_lists_cells_and_names_bad_flags(tmp_path, capsys):
    path = write(tmp_path, GRID)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--cells"]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert listed[0].split() == ["pending", "twin_seed-0"] and len(listed) == 7
    assert main(["sweep", str(path), "--workers", "2"]) == 2
    assert "--workers sets the local worker processes: pass it with --local" in (
        capsys.readouterr().err
    )
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "no grid file" in capsys.readouterr().err
    assert (
        main(["sweep", str(path), "--out", str(tmp_path / "out"), "--local", "--workers", "0"]) == 2
    )
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results").exists()


TWIN = {"env": "prefenv/Reacher-v0", "steps": 1600, "n_envs": 2, "n_steps": 100,
        "eval_episodes": 1, "seed": 3}  # fmt: skip


def test_a_true_reward_twin_trains_checkpoints_and_resumes_without_retraining(
    tmp_path, monkeypatch
):
    from prefenv.app import twin

    def killed(*args):
        raise KeyboardInterrupt  # killed after the last chunk's checkpoint

    monkeypatch.setattr(twin, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        twin.train_true_reward(twin.twin_spec(TWIN), tmp_path / "twin")
    state = json.loads((tmp_path / "twin/twin_state.json").read_text())
    assert state["timesteps"] >= 1600 and (tmp_path / "twin/agent").is_dir()
    monkeypatch.undo()
    trained = (tmp_path / "twin/agent").stat().st_mtime_ns
    summary = twin.train_true_reward(twin.twin_spec(TWIN), tmp_path / "twin")
    assert (tmp_path / "twin/agent").stat().st_mtime_ns == trained  # no step trained again
    assert summary["timesteps"] == state["timesteps"] and summary["seed"] == 3
    assert summary["eval_deterministic_return"] == summary["final_true_return"]
    assert np.isfinite(summary["eval_sampled_return"])
    with pytest.raises(ValueError, match="holds the true-reward twin of other settings"):
        twin.train_true_reward(twin.twin_spec({**TWIN, "seed": 4}), tmp_path / "twin")
    with pytest.raises(ValueError, match=r"does not read \['queries'\]"):
        twin.twin_spec({**TWIN, "queries": 50})


def test_the_python_api_takes_the_command_lines_choices(tmp_path, monkeypatch):
    from prefenv.app import api, run_sweep

    with pytest.raises(ValueError, match="pass it with --local"):
        run_sweep(write(tmp_path, GRID), tmp_path / "out", workers=2)
    monkeypatch.setattr("prefenv.app.sweep.LocalBackend", lambda workers: FakeBackend())
    outcome = api.run_sweep(write(tmp_path, GRID), tmp_path / "out", local=True, progress=False)
    assert len(outcome.done) == 6 and "| 250 | 2 | 25.5 ± 0.5 |" in outcome.table
