"""People as the teacher, without the web app: a scripted person answers through the queue.

The person is a thread that reads its queries from the run's :class:`QueryQueue` and answers
from the hidden true reward with 10% mistakes, at a few labels per second. The loop keeps
training while it answers; rounds end on time even when the person stops.
"""

from __future__ import annotations

import copy
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.ppo_kl import PPOKL, PPOKLConfig
from prefenv.human import HumanFeedback, HumanFeedbackConfig, HumanPreferenceLoop
from prefenv.loop import PreferenceLoopConfig
from prefenv.presenters import GenericPresenter
from prefenv.queue import QueryQueue
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig
from prefenv.sampling import sample_segment_pairs
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher
from prefenv.wrappers import VectorPreferenceReward


class Reach(gym.Env):
    """Point steered to the origin. Obs Box(2) position; action Box(2); hidden reward -distance.

    Terminated: never. Truncated: after 25 steps.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-3.0, 3.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-2, 2, size=2).astype(np.float32)
        self._t = 0
        return self._pos.copy(), {}

    def step(self, action):
        move = 0.2 * np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        self._pos = np.clip(self._pos + move, -3, 3).astype(np.float32)
        self._t += 1
        return self._pos.copy(), -float(np.linalg.norm(self._pos)), False, self._t >= 25, {}


MISTAKES = 0.1
NORM_OBS = False


class ScriptedPerson(threading.Thread):
    """Labels what the queue hands it from the true reward, wrong 10% of the time.

    Stops for good after ``stop_after`` labels (the person walks away).
    """

    def __init__(self, path, name: str, pace: float, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.queue = QueryQueue(path)
        self.token = self.queue.add_annotator(name)
        self.name_, self.pace, self.stop_after = name, pace, stop_after
        self.rng = np.random.default_rng(7)
        self.halt = threading.Event()
        self.given = 0

    def run(self) -> None:
        while not self.halt.is_set() and (self.stop_after is None or self.given < self.stop_after):
            query = self.queue.next_for(self.name_, gold_rate=0.1)  # as the app serves
            if query is None:
                time.sleep(0.05)
                continue
            ((left, right),) = self.queue.pairs([query.id])
            right_better = right.true_rewards.sum() > left.true_rewards.sum()
            if self.rng.random() < MISTAKES:
                right_better = not right_better
            self.queue.label(self.name_, query.public_id, "right" if right_better else "left", 1.0)
            self.given += 1
            time.sleep(1.0 / self.pace)


def _loop(tmp_path, config: HumanFeedbackConfig, queries: int, steps: int, rounds: int):
    venv = gym.vector.SyncVectorEnv([Reach for _ in range(4)])
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, n_members=2, hidden_sizes=(32, 32)
    )
    reward_env = VectorPreferenceReward(venv, model)
    env = TrajectoryRecorder(reward_env)
    agent = PPOKL(env, PPOKLConfig(n_steps=128, batch_size=64, n_epochs=5, learning_rate=1e-3,
                                   norm_reward=True, seed=0, norm_obs=NORM_OBS))  # fmt: skip
    path = tmp_path / "comparisons.sqlite"
    store = ComparisonStore(path)
    feedback = HumanFeedback(
        QueryQueue(path), config, run="reach",
        presenter_factory=GenericPresenter, folder_stem=lambda i: (tmp_path, f"q{i:06d}"),
    )  # fmt: skip
    loop = HumanPreferenceLoop(
        env=env, agent=agent, teacher=make_teacher("oracle", np.random.default_rng(0)),
        store=store, reward_model=model, reward_env=reward_env, feedback=feedback,
        config=PreferenceLoopConfig(
            total_timesteps=steps, total_queries=queries, n_rounds=rounds, initial_timesteps=2048,
            segment_length=10, step_unit=512,
            reward_train=RewardTrainConfig(max_epochs=40, lr=1e-3),
        ),
    )  # fmt: skip
    return loop, path


def _true_order_accuracy(model, pairs) -> float:
    """Share of pairs (with different true returns) the model orders as the true reward does."""
    with torch.no_grad():
        left = model.segment_returns([a for a, _ in pairs]).numpy()
        right = model.segment_returns([b for _, b in pairs]).numpy()
    true = np.array([b.true_rewards.sum() - a.true_rewards.sum() for a, b in pairs])
    keep = true != 0
    return float(np.mean(np.sign(right - left)[keep] == np.sign(true)[keep]))


def test_a_person_labelling_while_it_trains_raises_the_true_return(tmp_path):
    config = HumanFeedbackConfig(refit_every=10, round_timeout=20.0, gold_rate=0.1,
                                 undo_seconds=0.2, chunk_steps=512, poll_seconds=0.05)  # fmt: skip
    loop, path = _loop(tmp_path, config, queries=120, steps=49_152, rounds=3)
    untrained = copy.deepcopy(loop.reward_model)
    person = ScriptedPerson(path, "ann", pace=40.0)
    person.start()
    start = time.monotonic()
    history = loop.run()
    person.halt.set()
    loop.feedback.close()
    assert [m.round for m in history] == [0, 1, 2, 3]
    assert time.monotonic() - start < 4 * 20.0 + 60  # never more than the deadlines
    assert sum(m.refits for m in history) > len(history)  # refits as labels arrive, mid-round
    assert sum(m.human_labels for m in history) == loop.store.count() > 100
    assert all(c.teacher == "human:ann" for c in loop.store.load(labelled_only=False))
    initial, final = history[0].true_return, history[-1].true_return
    assert final > initial + 10.0, f"true return {initial:.1f} -> {final:.1f}"
    # held-out pairs of the final policy's episodes, ordered by the true (noise-free) reward
    held_out = sample_segment_pairs(loop.query_pool(), 300, 10, rng=np.random.default_rng(99))
    before = _true_order_accuracy(untrained, held_out)
    after = _true_order_accuracy(loop.reward_model, held_out)
    assert after >= 0.7 and after > before + 0.15, (before, after)
    gold = [row for row in QueryQueue(path).label_rows() if row["gold"] is not None]
    assert gold and all(row["comparison_id"] is None for row in gold)  # scored, never trained on


@pytest.mark.parametrize("on_timeout", ["continue", "simulate", "pause"])
def test_a_round_the_person_walks_away_from_ends_on_time(tmp_path, on_timeout):
    config = HumanFeedbackConfig(refit_every=5, round_timeout=3.0, on_timeout=on_timeout,
                                 gold_rate=0.0, undo_seconds=0.0, chunk_steps=512,
                                 poll_seconds=0.05)  # fmt: skip
    loop, path = _loop(tmp_path, config, queries=40, steps=6144, rounds=2)
    person = ScriptedPerson(path, "ann", pace=50.0, stop_after=12)  # rounds ask 4, 24, 12
    person.start()
    start = time.monotonic()
    history = loop.run()
    loop.feedback.close()
    assert time.monotonic() - start < 3 * 3.0 + 45
    human = sum(m.human_labels for m in history)
    assert human == 12
    queue = QueryQueue(path)
    if on_timeout == "pause":  # stops after round 1, the first one left unanswered
        assert loop.paused and [m.round for m in history] == [0, 1]
        assert history[-1].expired == 0
        assert all(q.closed is None for q in queue.round_queries("reach", 1))  # open for people
        assert len(loop.feedback.unanswered(1)) == 24 - 8  # and a resumed run
        return
    assert [m.round for m in history] == [0, 1, 2]
    expired = sum(m.expired for m in history)
    assert expired == 40 - 12
    simulated = sum(m.labels_this_round - m.human_labels for m in history)
    assert simulated == (expired if on_timeout == "simulate" else 0)
    closed = [q for r in range(3) for q in queue.round_queries("reach", r) if q.closed]
    assert len(closed) == expired
