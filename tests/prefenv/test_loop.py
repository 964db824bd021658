"""Preference-loop schedule and the reward-hacking alarm."""

from __future__ import annotations

import math

import pytest

from prefenv.loop import PreferenceLoopConfig, hacking_alarm, query_schedule
from prefenv.recording import EpisodeStats


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
