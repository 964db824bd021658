"""The episode accountant over Gymnasium's autoreset modes, against hand-computed returns."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from prefenv.episodes import EpisodeAccountant, EpisodeStats, step_true_rewards


class CountEnv(gym.Env):
    """Episodes of ``horizon`` steps with reward ``t`` at step ``t = 1..horizon``.

    ``info["true_reward"] = 10 t`` when ``report_true``; the last step terminates (``terminal``)
    or truncates.
    """

    observation_space = spaces.Box(0.0, 100.0, shape=(1,))
    action_space = spaces.Discrete(2)

    def __init__(self, horizon: int, terminal: bool = True, report_true: bool = True) -> None:
        self.horizon, self.terminal, self.report_true = horizon, terminal, report_true
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any):
        self.t += 1
        end = self.t >= self.horizon
        info = {"true_reward": 10.0 * self.t} if self.report_true else {}
        obs = np.array([self.t], dtype=np.float32)
        return obs, float(self.t), end and self.terminal, end and not self.terminal, info


def _run(
    mode: AutoresetMode, horizons: list[int], steps: int, **env_kwargs: Any
) -> tuple[list[EpisodeStats], list[np.ndarray], EpisodeAccountant]:
    venv = SyncVectorEnv(
        [lambda h=h: CountEnv(h, **env_kwargs) for h in horizons], autoreset_mode=mode
    )
    accountant = EpisodeAccountant(venv.num_envs, mode)
    venv.reset(seed=0)
    finished, valid = [], []
    for _ in range(steps):
        _, rewards, terminated, truncated, infos = venv.step(np.zeros(len(horizons), dtype=int))
        account = accountant.step(rewards, terminated, truncated, infos)
        finished += account.finished
        valid.append(account.valid)
    return finished, valid, accountant


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_returns_lengths_and_true_returns_of_every_finished_episode(mode) -> None:
    horizons, steps = [2, 3], 12
    finished, valid, _ = _run(mode, horizons, steps)
    # NEXT_STEP spends one extra (reset) step between episodes; SAME_STEP none.
    period = [h + (mode == AutoresetMode.NEXT_STEP) for h in horizons]
    for i, h in enumerate(horizons):
        mine = [e for e in finished if e.env_index == i]
        assert len(mine) == (steps + period[i] - h) // period[i]
        for e in mine:
            assert e.length == h and e.terminated
            assert e.learned_return == h * (h + 1) / 2
            # SAME_STEP: the last step's true reward is read from infos["final_info"]
            assert e.true_return == 10 * e.learned_return
            assert math.isnan(e.kl_sum)
    valid = np.stack(valid)
    if mode == AutoresetMode.NEXT_STEP:
        # env 0 (horizon 2): steps 1, 2 count, step 3 is the reset step, and so on
        np.testing.assert_array_equal(valid[:6, 0], [True, True, False, True, True, False])
    else:
        assert valid.all()


def test_the_order_of_finished_episodes_follows_the_steps() -> None:
    finished, _, _ = _run(AutoresetMode.SAME_STEP, [2, 3], 6)
    assert [(e.env_index, e.length) for e in finished] == [(0, 2), (1, 3), (0, 2), (0, 2), (1, 3)]


def test_truncation_and_episodes_in_flight() -> None:
    finished, _, accountant = _run(AutoresetMode.NEXT_STEP, [4], 6, terminal=False)
    assert [(e.length, e.terminated) for e in finished] == [(4, False)]
    # the second episode has run one step (step 6); a reset drops it
    accountant.reset()
    rewards, flags = np.array([5.0]), np.array([True])
    (late,) = accountant.step(rewards, flags, ~flags, {}).finished
    assert (late.length, late.learned_return) == (1, 5.0)


def test_unreported_true_reward_is_nan_or_the_env_reward() -> None:
    finished, _, _ = _run(AutoresetMode.NEXT_STEP, [3], 4, report_true=False)
    assert math.isnan(finished[0].true_return) and finished[0].learned_return == 6.0
    counted = EpisodeAccountant(1, AutoresetMode.DISABLED, unreported_true="reward")
    for t, done in ((1.0, False), (2.0, True)):
        account = counted.step(np.array([t]), np.array([done]), np.array([False]), {})
        np.testing.assert_array_equal(account.true_rewards, [t])
    assert account.finished[0].true_return == 3.0


def test_kl_is_summed_over_the_valid_steps_only() -> None:
    accountant = EpisodeAccountant(2, AutoresetMode.NEXT_STEP)
    zeros, ones = np.zeros(2), np.ones(2, dtype=bool)
    done_env0 = np.array([True, False])
    accountant.step(zeros, done_env0, ~ones, {}, kl=np.array([0.5, 0.25]))
    # env 0's reset step: its KL is not counted
    account = accountant.step(zeros, ~done_env0, ~ones, {}, kl=np.array([9.0, 0.25]))
    np.testing.assert_array_equal(account.valid, [False, True])
    assert [e.kl_sum for e in account.finished] == [0.5]


def test_single_env_info_and_final_info_precedence() -> None:
    values, reported = step_true_rewards({"true_reward": 2.5}, 1)
    assert values.tolist() == [2.5] and reported.tolist() == [True]
    infos = {
        "true_reward": np.array([1.0, 0.0, 3.0]),
        "_true_reward": np.array([True, False, True]),
        "final_info": {"true_reward": np.array([0.0, 7.0, 0.0]),
                       "_true_reward": np.array([False, True, False])},
    }  # fmt: skip
    values, reported = step_true_rewards(infos, 3)
    assert values.tolist() == [1.0, 7.0, 3.0] and reported.all()


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="num_envs >= 1"):
        EpisodeAccountant(0)
    with pytest.raises(ValueError, match="'nan' or 'reward'"):
        EpisodeAccountant(1, unreported_true="zero")  # type: ignore[arg-type]
