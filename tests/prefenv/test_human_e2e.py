"""Human in the loop, end to end: `prefenv train --teacher human` + `prefenv label` + a person.

The "person" is an HTTP client with the page's own calls (the annotator link, ``/api/next``,
``/api/label`` with the CSRF token). It answers from the hidden true reward with 10% mistakes,
at a human pace of a few labels per second, and walks away before the last round is answered.
The run must keep training while it answers, learn from it, and end on time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import httpx
import numpy as np
import pytest
import torch

from prefenv.queue import QueryQueue
from prefenv.reward_models import RewardEnsemble, load_reward_model
from prefenv.sampling import sample_segment_pairs

USER_PACKAGE = textwrap.dedent(
    '''
    """A point steered to the origin, registered as humanreach/Reach-v0 (hidden reward: -distance)."""

    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class Reach(gym.Env):
        def __init__(self):
            self.observation_space = spaces.Box(-3.0, 3.0, shape=(2,), dtype=np.float32)
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
            self._pos = np.zeros(2, dtype=np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self._pos = self.np_random.uniform(-2, 2, size=2).astype(np.float32)
            return self._pos.copy(), {}

        def step(self, action):
            move = 0.2 * np.clip(np.asarray(action, dtype=np.float32), -1, 1)
            self._pos = np.clip(self._pos + move, -3, 3).astype(np.float32)
            return self._pos.copy(), -float(np.linalg.norm(self._pos)), False, False, {}


    gym.register("humanreach/Reach-v0", entry_point=Reach, max_episode_steps=25)
    '''
)

TIMEOUT = 15.0  # seconds each round waits for the person
TRAIN = [
    "--import", "humanreach", "--env", "humanreach/Reach-v0", "--teacher", "human",
    "--steps", "73728", "--initial-steps", "2048", "--queries", "300", "--rounds", "4",
    "--n-envs", "4", "--n-steps", "128", "--segment-length", "10", "--ensemble", "2",
    "--reward-width", "32", "--reward-epochs", "40", "--eval-episodes", "0",
    "--refit-every", "10", "--human-timeout", str(TIMEOUT), "--gold-rate", "0.1",
    "--hparams", "batch_size=64", "n_epochs=5", "learning_rate=0.001",
]  # fmt: skip


def _person(
    url: str, token: str, store: Path, walk_away_after: int, done: Callable[[], bool]
) -> int:
    """Label through HTTP until ``walk_away_after`` labels or ``done()``; labels given."""
    rng = random.Random(3)
    queue = QueryQueue(store)  # the test's answer key: the hidden true reward of each query
    given = 0
    with httpx.Client(base_url=url, follow_redirects=True, timeout=10.0) as client:
        assert client.get(f"/a/{token}").status_code == 200
        while given < walk_away_after and not done():
            shown = client.get("/api/next").json()
            if shown["query"] is None:
                time.sleep(0.3)
                continue
            ((left, right),) = queue.pairs([queue.query(shown["query"]).id])
            right_better = right.true_rewards.sum() > left.true_rewards.sum()
            if rng.random() < 0.1:
                right_better = not right_better
            answer = client.post(
                "/api/label",
                json={"query": shown["query"], "choice": "right" if right_better else "left",
                      "response_seconds": 0.15},
                headers={"X-CSRF-Token": shown["csrf"]},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            given += 1
            time.sleep(0.15)  # about 5 labels a second
    queue.close()
    return given


def _order_accuracy(model, pairs) -> float:
    with torch.no_grad():
        left = model.segment_returns([a for a, _ in pairs]).numpy()
        right = model.segment_returns([b for _, b in pairs]).numpy()
    true = np.array([b.true_rewards.sum() - a.true_rewards.sum() for a, b in pairs])
    keep = true != 0
    return float(np.mean(np.sign(right - left)[keep] == np.sign(true)[keep]))


@pytest.mark.slow  # 70 s; tests/prefenv/test_human_loop.py proves learning through the queue
def test_a_person_labels_over_http_while_prefenv_train_runs(tmp_path, label_server):
    site, out = tmp_path / "site", tmp_path / "run"
    (site / "humanreach").mkdir(parents=True)
    (site / "humanreach" / "__init__.py").write_text(USER_PACKAGE)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "train.log").open("w")
    start = time.monotonic()
    train = subprocess.Popen([sys.executable, "-m", "prefenv.app.cli", "train", *TRAIN,
                              "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        while not (out / "labelling.json").is_file():
            assert train.poll() is None, (tmp_path / "train.log").read_text()
            assert time.monotonic() - start < 120, "the run never posted its first queries"
            time.sleep(0.2)
        with QueryQueue(out / "comparisons.sqlite") as queue:
            token = queue.add_annotator("pat")
        server = label_server(out)
        given = _person(server.url, token, out / "comparisons.sqlite", walk_away_after=290,
                        done=lambda: train.poll() is not None or time.monotonic() > start + 240)  # fmt: skip
        code = train.wait(timeout=300)
    finally:
        if train.poll() is None:
            train.kill()
        log.close()
    printed = (tmp_path / "train.log").read_text()
    assert code == 0, printed
    assert time.monotonic() - start < 300
    summary = json.loads((out / "summary.json").read_text())
    history = json.loads((out / "loop_state.json").read_text())["history"]
    assert len(history) == 4
    # every harvested answer of the person is a training label; gold questions are not
    with QueryQueue(out / "comparisons.sqlite") as queue:
        rows = queue.label_rows()
    answered = [r for r in rows if r["gold"] is None]
    assert len(rows) == given and summary["labels_human"] == len(answered) < 300
    assert summary["labels_simulated"] == 0
    assert sum(r["expired"] for r in history) == 300 - len(answered)  # the person walked away
    assert f"labels trained on: {len(answered)} from people, 0 simulated" in printed
    # the agent's true return rises, and the reward model orders held-out pairs by the truth
    returns = [r["true_return"] for r in history]
    print(f"true return per round {[round(r) for r in returns]}; {len(rows)} labels given "
          f"({len(answered)} on training queries), expired {[r['expired'] for r in history]}, "
          f"refits {[r['refits'] for r in history]}")  # fmt: skip
    assert returns[-1] > returns[0] + 10.0, returns
    from prefenv.app.runs import load_trajectories

    pool = load_trajectories(out / "query_pool.npz")
    held_out = sample_segment_pairs(pool, 300, 10, rng=np.random.default_rng(5))
    spaces = _spaces(site)
    trained = load_reward_model(out / "reward_model", *spaces)
    torch.manual_seed(0)
    untrained = RewardEnsemble.for_spaces(*spaces, n_members=2, hidden_sizes=(32, 32))
    before, after = _order_accuracy(untrained, held_out), _order_accuracy(trained, held_out)
    assert after >= 0.8 and after > before + 0.2, (before, after)


def _spaces(site: Path):
    sys.path.insert(0, str(site))
    try:
        import humanreach  # noqa: F401  (registers the id)

        env = gym.make("humanreach/Reach-v0")
        return env.observation_space, env.action_space
    finally:
        sys.path.remove(str(site))
