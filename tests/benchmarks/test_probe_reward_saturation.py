"""benchmarks/probe_reward_saturation.py: held-out windows never end in a fall, and a wrong
folder is refused in one line that names the missing file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from prefenv.app.runs import save_trajectories
from prefenv.records import Trajectory

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_reward_saturation.py"


def _episode(index: int, length: int, fell: bool) -> Trajectory:
    """Observations and actions ``[episode, t]``; the true reward is ``t`` (the step's index)."""
    t = np.arange(length + 1, dtype=np.float32)
    obs = np.stack([np.full_like(t, index), t], axis=1)
    return Trajectory(obs, obs[:-1].copy(), t[:-1].copy(), fell)


def test_windows_stay_in_one_episode_and_never_reach_a_fall(tmp_path, benchmark_script):
    # (length, fell): episode 2 is a 50-step fall, too short for a window that stops before
    # its last step; episode 3 is a 50-step cut episode, exactly one window long.
    episodes = [(60, True), (120, False), (50, True), (50, False), (53, True)]
    save_trajectories(
        tmp_path / "query_pool.npz", [_episode(i, n, f) for i, (n, f) in enumerate(episodes)]
    )
    data = benchmark_script("probe_reward_saturation").windows(tmp_path, 50, 2000, seed=0)
    obs, acts, true = data["obs"], data["acts"], data["true"]
    assert obs.shape == (2000, 51, 2) and acts.shape == (2000, 50, 2) and true.shape == (2000, 50)
    episode = obs[:, 0, 0].astype(int)
    assert (obs[..., 0] == episode[:, None]).all() and (acts[..., 0] == episode[:, None]).all()
    start = obs[:, 0, 1]
    assert (np.diff(obs[..., 1], axis=1) == 1).all()  # consecutive steps
    np.testing.assert_array_equal(true, acts[..., 1])  # rewards line up with the actions
    np.testing.assert_array_equal(acts[..., 1], obs[:, :-1, 1])
    last = start + 49
    lengths = np.array([n for n, _ in episodes])[episode]
    fell = np.array([f for _, f in episodes])[episode]
    assert (last <= lengths - 1).all()
    assert (last[fell] < lengths[fell] - 1).all()  # a falling episode's last step is never in
    seen = set(episode.tolist())
    assert 2 not in seen and {0, 1, 3, 4} <= seen
    # episodes are drawn in proportion to the windows they hold (120-step one the most)
    counts = np.bincount(episode, minlength=5)
    assert counts[1] > counts[0] > counts[4] > counts[3]


def test_a_folder_without_the_inputs_is_refused_in_one_line(tmp_path):
    save_trajectories(tmp_path / "pool" / "query_pool.npz", [_episode(0, 60, False)])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    cases = {
        ("--labels", str(tmp_path / "run"), "--pool", str(tmp_path / "nopool")): "no query_pool",
        ("--labels", str(tmp_path / "run"), "--pool", str(tmp_path / "pool")): (
            "no comparisons.sqlite"
        ),
        ("--score", str(tmp_path / "run"), "--pool", str(tmp_path / "pool")): "no reward_model/",
    }
    for args, expected in cases.items():
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "finished `prefenv train` run folder" in done.stderr
