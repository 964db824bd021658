"""Preference-loop schedule and the reward-hacking alarm."""

from __future__ import annotations

import dataclasses
import json
import math

import gymnasium as gym
import numpy as np
import pytest

from prefenv.app.api import start
from prefenv.app.spec import TrainSpec
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig, hacking_alarm, query_schedule
from prefenv.recording import EpisodeStats, TrajectoryRecorder
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher


@pytest.mark.parametrize("schedule", ["constant", "hyperbolic"])
def test_query_schedule_spends_exactly_the_budget(schedule):
    config = PreferenceLoopConfig(
        total_timesteps=100_000, total_queries=1000, n_rounds=20, schedule=schedule
    )
    counts = query_schedule(config)
    assert len(counts) == 21 and sum(counts) == 1000 and counts[0] == 100
    if schedule == "hyperbolic":
        assert counts[1] > counts[5] > counts[20]  # front-loaded while the reward is worst
    else:
        assert max(counts[1:]) - min(counts[1:]) <= 1


def test_the_train_spec_hands_the_first_share_and_the_schedule_to_the_loop():
    default = TrainSpec(env="prefenv/Hopper-v0", queries=50, rounds=11)
    assert query_schedule(default.loop_config()) == [5, 15, 8, 5, 4, 3, 3, 2, 2, 2, 1]
    spec = dataclasses.replace(default, initial_query_fraction=0.4, query_schedule="constant")
    config = spec.loop_config()
    assert (config.initial_query_fraction, config.schedule) == (0.4, "constant")
    assert query_schedule(config) == [20, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]


def test_unset_rounds_follow_the_presets_entry_and_the_run_records_the_number(tmp_path):
    assert TrainSpec().resolved_rounds() == 7  # the default 100k-step run keeps its 7 rounds
    # HalfCheetah's entry: one round per 13,500 env steps after the initial ones
    assert TrainSpec(steps=300_000, initial_steps=16_384).resolved_rounds() == 21
    assert TrainSpec(steps=1_000_000, initial_steps=16_384).resolved_rounds() == 73
    assert TrainSpec(steps=12_000).resolved_rounds() == 1  # never fewer than one
    assert TrainSpec(steps=300_000, rounds=11).resolved_rounds() == 11  # a user's choice wins
    spec = TrainSpec(steps=300_000, initial_steps=16_384)
    assert spec.loop_config().n_rounds == 20 and spec.with_preset().rounds == 21
    # no steps_per_round in the task's entry: 7 rounds, as before the entry existed
    assert TrainSpec(env="prefenv/Walker2d-v0", steps=1_000_000).resolved_rounds() == 7
    tiny = TrainSpec(env="prefenv/Reacher-v0", steps=30_000, initial_steps=3_000, n_envs=2,
                     n_steps=100, queries=24)  # fmt: skip
    start(tiny, tmp_path / "run").store.close()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["spec"]["rounds"] == 7


def _stats(true, learned):
    return [EpisodeStats(t, lr, 100) for t, lr in zip(true, learned, strict=True)]


def test_hacking_alarm_fires_when_learned_rises_and_true_falls():
    assert hacking_alarm(_stats([10, 8, 6, 4, 2], [1, 2, 3, 4, 5]))
    assert not hacking_alarm(_stats([2, 4, 6, 8, 10], [1, 2, 3, 4, 5]))  # both improve
    assert not hacking_alarm(_stats([10, 8, 6, 4, 2], [5, 4, 3, 2, 1]))  # both fall: no hacking
    assert not hacking_alarm(_stats([10, 2, 6], [1, 3, 2]))  # too few episodes to judge


def test_invalid_loop_configs_name_the_fix():
    with pytest.raises(ValueError, match="must exceed initial_timesteps"):
        PreferenceLoopConfig(total_timesteps=1000, initial_timesteps=5000)
    with pytest.raises(ValueError, match="query_method must be one of"):
        PreferenceLoopConfig(total_timesteps=100_000, query_method="random")
    assert math.isclose(
        sum(
            query_schedule(PreferenceLoopConfig(total_timesteps=10**5, total_queries=7, n_rounds=3))
        ),
        7,
    )


def _recorder(point_env_cls, capacity_steps: int) -> TrajectoryRecorder:
    venv = gym.vector.SyncVectorEnv([lambda: point_env_cls(horizon=5)])
    recorder = TrajectoryRecorder(venv, capacity_steps=capacity_steps)
    recorder.reset(seed=0)
    return recorder


def _record_episodes(recorder: TrajectoryRecorder, n: int) -> None:
    for _ in range(n * 6):  # 5 steps, then NEXT_STEP's reset step
        recorder.step(np.zeros((1, 2), dtype=np.float32))


def test_a_restored_query_pool_precedes_new_episodes_within_the_recorders_capacity(
    point_env_cls, tmp_path
):
    before = _recorder(point_env_cls, capacity_steps=12)  # room for two 5-step episodes
    _record_episodes(before, 3)
    saved = before.trajectories
    assert len(saved) == 2
    recorder = _recorder(point_env_cls, capacity_steps=12)  # the resumed process's recorder
    loop = PreferenceLoop(
        env=recorder,
        agent=None,  # type: ignore[arg-type]  (the pool needs no agent)
        teacher=make_teacher("oracle", np.random.default_rng(0)),
        store=ComparisonStore(tmp_path / "c.sqlite"),
        reward_model=None,
        config=PreferenceLoopConfig(total_timesteps=100, initial_timesteps=10),
    )
    loop.restore_query_pool(saved)
    assert loop.query_pool() == saved
    _record_episodes(recorder, 1)
    (new,) = recorder.trajectories
    pool = loop.query_pool()
    assert pool[0] is saved[1] and pool[1] is new  # oldest dropped first, as one recorder would
    _record_episodes(recorder, 1)
    assert loop.query_pool() == recorder.trajectories  # every restored episode has aged out
    loop.store.close()
