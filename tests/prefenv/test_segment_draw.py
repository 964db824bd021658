"""Drawing segments per step: every window of the query pool equally likely, not every episode."""

from __future__ import annotations

import numpy as np
import pytest

from prefenv.app.spec import TrainSpec
from prefenv.loop import PreferenceLoopConfig
from prefenv.records import Trajectory
from prefenv.sampling import SEGMENT_DRAWS, sample_segment_pairs, select_queries

H = 50


def _episode(index: int, steps: int, terminated: bool) -> Trajectory:
    """``obs[:, 0]`` names the episode; a terminated one ends with a fall."""
    return Trajectory(
        np.full((steps + 1, 1), float(index)), np.zeros((steps, 1)), np.ones(steps),
        terminated=terminated,
    )  # fmt: skip


def _falls_and_one_run() -> list[Trajectory]:
    """Fifty 20-step falls (as a run's start records them), then one 1,000-step episode."""
    return [_episode(i, 20, True) for i in range(50)] + [_episode(50, 1000, False)]


def _share_of_long_run(draw: str, seed: int) -> float:
    pairs = sample_segment_pairs(
        _falls_and_one_run(), 2000, H, rng=np.random.default_rng(seed),
        cut_at_termination=True, draw=draw,
    )  # fmt: skip
    sources = np.array([segment.obs[0, 0] for pair in pairs for segment in pair])
    return float(np.mean(sources == 50))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_episode_the_falls_outnumber_the_run_and_per_step_they_do_not(seed: int) -> None:
    # Windows: the run has 1000 - 50 + 1 = 951 starts, each 20-step fall 20 (cut at the fall).
    per_step = 951 / (951 + 50 * 20)
    assert _share_of_long_run("episode", seed) == pytest.approx(1 / 51, abs=0.01)
    assert _share_of_long_run("step", seed) == pytest.approx(per_step, abs=0.03)


def test_per_step_every_window_is_equally_likely() -> None:
    # Two uncut episodes of 60 and 150 steps: 11 and 101 starts.
    pool = [_episode(0, 60, False), _episode(1, 150, False)]
    pairs = sample_segment_pairs(pool, 5000, H, rng=np.random.default_rng(3), draw="step")
    segments = [segment for pair in pairs for segment in pair]
    assert np.mean([s.obs[0, 0] == 1 for s in segments]) == pytest.approx(101 / 112, abs=0.015)
    # Within an episode the start stays uniform, and every segment has H steps.
    assert {len(s) for s in segments} == {H}


def test_equal_lengths_draw_every_episode_alike_either_way() -> None:
    pool = [_episode(i, 200, False) for i in range(4)]
    for draw in SEGMENT_DRAWS:
        pairs = sample_segment_pairs(pool, 4000, H, rng=np.random.default_rng(4), draw=draw)
        counts = np.bincount([int(s.obs[0, 0]) for pair in pairs for s in pair], minlength=4)
        assert counts.min() / counts.max() > 0.9, (draw, counts)


def test_active_selection_draws_its_candidates_per_step_too() -> None:
    class Members:
        def member_segment_returns(self, segments):  # noqa: ANN001, ANN202
            import torch

            return torch.randn(3, len(segments), generator=torch.Generator().manual_seed(0))

    pairs = select_queries(
        _falls_and_one_run(), 300, "disagreement", Members(), H, rng=np.random.default_rng(5),
        cut_at_termination=True, draw="step",
    )  # fmt: skip
    sources = np.array([s.obs[0, 0] for pair in pairs for s in pair])
    assert np.mean(sources == 50) > 0.35  # per episode it would be about 0.02


def test_an_unknown_draw_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="episode, step"):
        sample_segment_pairs(_falls_and_one_run(), 4, H, rng=np.random.default_rng(0), draw="steps")
    with pytest.raises(ValueError, match="segment_draw"):
        PreferenceLoopConfig(total_timesteps=20_000, segment_draw="steps")
    with pytest.raises(ValueError, match="--segment-draw 'steps': choose one of episode, step"):
        TrainSpec(env="prefenv/Hopper-v0", segment_draw="steps")


def test_the_train_spec_hands_the_draw_to_the_loop() -> None:
    assert TrainSpec(env="prefenv/Hopper-v0").loop_config().segment_draw == "episode"
    spec = TrainSpec(env="prefenv/Hopper-v0", segment_draw="step")
    assert spec.loop_config().segment_draw == "step"
