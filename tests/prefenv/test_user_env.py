"""A user's own env through the front door: `prefenv train --import`, `module:Id`, entry points,
and the Python API, each in a fresh process that knows the env only through what it is told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

USER_PACKAGE = textwrap.dedent(
    '''
    """A throwaway user package: a point steered to a goal, registered as mygoal/GoalReach-v0."""

    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class GoalReach(gym.Env):
        def __init__(self):
            self.observation_space = spaces.Box(-5.0, 5.0, shape=(4,), dtype=np.float32)
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
            self._state = np.zeros(4, dtype=np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self._state = self.np_random.uniform(-2, 2, size=4).astype(np.float32)
            return self._state.copy(), {}

        def step(self, action):
            action = np.clip(np.asarray(action, dtype=np.float32), -1, 1)
            self._state[:2] = np.clip(self._state[:2] + 0.2 * action, -5, 5)
            reward = -float(np.linalg.norm(self._state[:2] - self._state[2:]))
            return self._state.copy(), reward, False, False, {}


    gym.register("mygoal/GoalReach-v0", entry_point=GoalReach, max_episode_steps=50)
    '''
)

TINY = [
    "--steps", "1600", "--initial-steps", "400", "--queries", "24", "--rounds", "3",
    "--n-envs", "2", "--n-steps", "100", "--segment-length", "25", "--reward-epochs", "3",
    "--ensemble", "2",
]  # fmt: skip


@pytest.fixture()
def user_site(tmp_path: Path) -> Path:
    """A folder on PYTHONPATH holding the user's package ``my_goal_pkg`` (not installed)."""
    site = tmp_path / "site"
    (site / "my_goal_pkg").mkdir(parents=True)
    (site / "my_goal_pkg" / "__init__.py").write_text(USER_PACKAGE)
    return site


def _prefenv(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``prefenv ARGV`` in a new interpreter whose path holds the user's folder."""
    env = {**os.environ, "PYTHONPATH": str(site), "MUJOCO_GL": "egl"}
    return subprocess.run(
        [sys.executable, "-m", "prefenv.app.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unimported_user_id_is_one_line_naming_import(user_site, tmp_path):
    """The failure as reported: `--env my/Env-v0` ended in Gymnasium's NamespaceNotFound."""
    out = tmp_path / "run"
    result = _prefenv(user_site, "train", *TINY, "--env", "mygoal/GoalReach-v0", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown env id 'mygoal/GoalReach-v0'" in result.stderr
    assert "--import my_pkg" in result.stderr and "prefenv/HalfCheetah-v0" in result.stderr
    assert not out.exists()


def test_train_with_import_then_resume_and_eval_import_it_again(user_site, tmp_path):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--import", "my_goal_pkg", "--env", "mygoal/GoalReach-v0"]
    result = _prefenv(user_site, *argv, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "prefenv train: mygoal/GoalReach-v0" in result.stdout  # the start banner
    assert f"tensorboard --logdir {out / 'agent_logs'}" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "mygoal/GoalReach-v0" and summary["labels_used"] == 24
    assert summary["final_true_return"] < 0  # minus the distance to the goal, summed
    assert json.loads((out / "run.json").read_text())["spec"]["imports"] == ["my_goal_pkg"]
    # resume and eval in new processes: nothing but run.json says where the env lives
    resumed = _prefenv(user_site, "resume", "--out", str(out))
    assert resumed.returncode == 0 and "already complete (3 rounds)" in resumed.stdout
    evaluated = _prefenv(user_site, "eval", "--out", str(out), "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["episodes"] == 2


def test_module_colon_id_trains_and_check_takes_it(user_site, tmp_path):
    out = tmp_path / "run"
    result = _prefenv(user_site, "train", *TINY, "--env", "my_goal_pkg:mygoal/GoalReach-v0",
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["labels_used"] == 24
    checked = _prefenv(user_site, "check", "mygoal/GoalReach-v0", "--import", "my_goal_pkg")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["obs_dim"] == 4


def test_an_entry_point_of_an_installed_package_is_found_without_import(user_site, tmp_path):
    """`[project.entry-points."prefenv.tasks"]` in the user's pyproject: what pip writes."""
    dist = user_site / "my_goal_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-goal-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[prefenv.tasks]\nmy_goal_pkg = my_goal_pkg\n")
    out = tmp_path / "run"
    result = _prefenv(user_site, "train", *TINY, "--env", "mygoal/GoalReach-v0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["env"] == "mygoal/GoalReach-v0"


def test_the_python_api_trains_the_user_env_with_the_cli_defaults(user_site, tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import json
        import my_goal_pkg  # registers mygoal/GoalReach-v0
        from prefenv.app import evaluate, train
        from prefenv.app.cli import QUICKSTART
        from prefenv.app.spec import TrainSpec

        assert TrainSpec() == QUICKSTART  # the API's defaults are the command line's
        summary = train(env="mygoal/GoalReach-v0", out={str(out)!r}, steps=1600,
                        initial_steps=400, queries=24, rounds=3, n_envs=2, n_steps=100,
                        segment_length=25, reward_epochs=3, ensemble=2, progress=False)
        print(json.dumps({{"summary": summary, "eval": evaluate({str(out)!r}, episodes=2)}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(user_site), "MUJOCO_GL": "egl"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["summary"]["labels_used"] == 24 and payload["summary"]["timesteps"] == 1600
    assert payload["eval"]["episodes"] == 2 and payload["eval"]["true_return_mean"] < 0
    for mode in ("deterministic", "sampled"):  # both reported, with episode lengths
        assert (
            payload["eval"][mode]["length_mean"] == 50
            and payload["eval"][mode]["true_return_mean"] < 0
        )
    assert (
        payload["eval"]["true_return_mean"] == payload["eval"]["deterministic"]["true_return_mean"]
    )


def test_the_python_api_refuses_a_misspelled_setting():
    from prefenv.app.api import settings

    with pytest.raises(ValueError, match="unknown train setting 'querys': did you mean 'queries'"):
        settings(querys=10)
