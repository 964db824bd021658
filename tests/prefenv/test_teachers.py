"""Synthetic B-Pref teachers: each preset's behaviour, thresholds, composition and errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from prefenv import teachers
from prefenv.records import Comparison, Segment
from prefenv.teachers import (
    PRESETS,
    SyntheticTeacher,
    Teacher,
    TeacherConfig,
    Thresholds,
    make_teacher,
)


def _segment(rewards: list[float] | np.ndarray) -> Segment:
    rewards = np.asarray(rewards, dtype=np.float32)
    steps = len(rewards)
    return Segment(obs=np.zeros((steps + 1, 2)), acts=np.zeros((steps, 1)), true_rewards=rewards)


def _pairs(rewards0: np.ndarray, rewards1: np.ndarray) -> list[tuple[Segment, Segment]]:
    return [(_segment(r0), _segment(r1)) for r0, r1 in zip(rewards0, rewards1, strict=True)]


def _distinct_returns(n: int, horizon: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    rewards0 = gen.normal(size=(n, horizon))
    rewards1 = gen.normal(size=(n, horizon))
    assert np.all(rewards0.sum(1) != rewards1.sum(1))
    return rewards0, rewards1


# --- presets and configuration ---------------------------------------------------------------


def test_presets_match_the_bpref_table() -> None:
    expected = {  # beta, gamma, eps_mistake, eps_skip, eps_equal (REFERENCES.md, B-Pref)
        "oracle": (math.inf, 1.0, 0.0, 0.0, 0.0),
        "noisy": (1.0, 1.0, 0.0, 0.0, 0.0),
        "mistake": (math.inf, 1.0, 0.1, 0.0, 0.0),
        "skip": (math.inf, 1.0, 0.0, 0.1, 0.0),
        "myopic": (math.inf, 0.9, 0.0, 0.0, 0.0),
        "equal": (math.inf, 1.0, 0.0, 0.0, 0.1),
    }
    assert set(PRESETS) == set(expected)
    for name, values in expected.items():
        config = PRESETS[name]
        assert config.name == name
        assert (
            config.beta,
            config.gamma,
            config.eps_mistake,
            config.eps_skip,
            config.eps_equal,
        ) == values
        assert config.rational == (name != "noisy")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 0.0}, "gamma must be in"),
        ({"gamma": 1.5}, "gamma must be in"),
        ({"eps_mistake": 1.0}, "eps_mistake must be in"),
        ({"eps_skip": -0.1}, "eps_skip must be in"),
        ({"eps_equal": 2.0}, "eps_equal must be in"),
        ({"beta": math.nan}, "beta is NaN"),
        ({"name": ""}, "non-empty"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TeacherConfig(**kwargs)


def test_composition_merges_presets() -> None:
    teacher = make_teacher("noisy+mistake", np.random.default_rng(0))
    assert teacher.config == TeacherConfig(name="noisy+mistake", beta=1.0, eps_mistake=0.1)
    assert teacher.name == "noisy+mistake"
    combined = make_teacher("myopic+skip+equal", np.random.default_rng(0)).config
    assert (combined.gamma, combined.eps_skip, combined.eps_equal) == (0.9, 0.1, 0.1)


def test_composition_conflict_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, "noisier", TeacherConfig(name="noisier", beta=0.5))
    with pytest.raises(ValueError, match="sets beta twice"):
        make_teacher("noisy+noisier", np.random.default_rng(0))


@pytest.mark.parametrize("spec", ["orcale", "noisy+orcale"])
def test_unknown_teacher_lists_the_presets(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        make_teacher(spec, np.random.default_rng(0))
    message = str(info.value)
    assert "unknown teacher 'orcale'" in message
    assert "oracle, noisy, mistake, skip, myopic, equal" in message
    assert "'+'" in message


def test_overrides_and_config_spec() -> None:
    teacher = make_teacher("noisy", np.random.default_rng(0), beta=2.0)
    assert teacher.config.beta == 2.0
    assert teacher.name == "noisy(beta=2.0)"
    assert make_teacher("noisy", np.random.default_rng(0), beta=2.0, name="b2").name == "b2"
    config = TeacherConfig(name="custom", gamma=0.5)
    assert make_teacher(config, np.random.default_rng(0)).config is config
    with pytest.raises(ValueError, match="unknown teacher parameter"):
        make_teacher("oracle", np.random.default_rng(0), betta=2.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        make_teacher("oracle", np.random.default_rng(0), gamma=0.0)


def test_teacher_protocol_and_rng_type() -> None:
    teacher = make_teacher("oracle", np.random.default_rng(0))
    assert isinstance(teacher, Teacher)
    with pytest.raises(TypeError, match="numpy Generator"):
        SyntheticTeacher(PRESETS["oracle"], rng=0)  # type: ignore[arg-type]


# --- rational labels ---------------------------------------------------------------------------


def test_oracle_orders_every_pair_with_distinct_returns() -> None:
    rewards0, rewards1 = _distinct_returns(2000, 7, seed=1)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    labels = make_teacher("oracle", rng).label_returns(rewards0, rewards1)
    np.testing.assert_array_equal(labels, (rewards1.sum(1) > rewards0.sum(1)).astype(float))
    assert rng.bit_generator.state == state  # a rational teacher draws nothing


@pytest.mark.parametrize("beta", [math.inf, 0.0, -1.0])
def test_rational_ties_get_half(beta: float) -> None:
    teacher = make_teacher(TeacherConfig(beta=beta), np.random.default_rng(0))
    rewards0 = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    rewards1 = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(teacher.label_returns(rewards0, rewards1), [0.5, 0.5, 1.0, 0.0])


def test_label_builds_comparisons_in_order() -> None:
    pairs = [(_segment([1.0, 2.0]), _segment([0.0, 0.0])), (_segment([0.0]), _segment([3.0]))]
    comparisons = make_teacher("oracle", np.random.default_rng(0)).label(pairs)
    assert all(isinstance(c, Comparison) for c in comparisons)
    assert [c.label for c in comparisons] == [0.0, 1.0]  # mixed lengths are fine with gamma == 1
    assert [c.teacher for c in comparisons] == ["oracle", "oracle"]
    assert comparisons[0].segment0 is pairs[0][0] and comparisons[1].segment1 is pairs[1][1]
    assert make_teacher("oracle", np.random.default_rng(0)).label([]) == []


def test_label_returns_checks_shapes() -> None:
    teacher = make_teacher("oracle", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        teacher.label_returns(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        teacher.label_returns(np.zeros(3), np.zeros(3))


# --- noisy (Bradley-Terry) and mistake ---------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_noisy_preference_rate_follows_the_sigmoid(beta: float) -> None:
    n = 20_000
    diffs = np.random.default_rng(1).uniform(-4.0, 4.0, size=n)
    teacher = make_teacher("noisy", np.random.default_rng(2), beta=beta)
    labels = teacher.label_returns(np.zeros((n, 1)), diffs[:, None])
    assert set(np.unique(labels)) == {0.0, 1.0}
    edges = np.linspace(-4.0, 4.0, 9)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (diffs >= low) & (diffs < high)
        expected = np.mean(1.0 / (1.0 + np.exp(-beta * diffs[in_bin])))
        # E[rate] is exactly the bin's mean sigmoid; allow 4 binomial standard deviations.
        tolerance = 4.0 * math.sqrt(max(expected * (1 - expected), 0.01) / in_bin.sum())
        assert abs(labels[in_bin].mean() - expected) < tolerance, (low, high)


def test_noisy_sigmoid_is_stable_for_huge_returns() -> None:
    teacher = make_teacher("noisy", np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = teacher.label_returns(np.array([[1e6], [0.0]]), np.array([[0.0], [1e6]]))
    np.testing.assert_array_equal(labels, [0.0, 1.0])


def test_noisy_is_deterministic_for_a_seed() -> None:
    rewards0, rewards1 = _distinct_returns(500, 3, seed=3)
    first = make_teacher("noisy", np.random.default_rng(7)).label_returns(rewards0, rewards1)
    again = make_teacher("noisy", np.random.default_rng(7)).label_returns(rewards0, rewards1)
    other = make_teacher("noisy", np.random.default_rng(8)).label_returns(rewards0, rewards1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_mistake_flips_ten_percent_of_oracle_labels() -> None:
    n = 20_000
    rewards0, rewards1 = _distinct_returns(n, 5, seed=4)
    oracle = make_teacher("oracle", np.random.default_rng(0)).label_returns(rewards0, rewards1)
    mistaken = make_teacher("mistake", np.random.default_rng(5)).label_returns(rewards0, rewards1)
    assert set(np.unique(mistaken)) == {0.0, 1.0}
    flipped = np.mean(mistaken != oracle)
    assert abs(flipped - 0.1) < 4.0 * math.sqrt(0.1 * 0.9 / n)  # 4 sigma = 0.0085


def test_noisy_plus_mistake_flips_bradley_terry_labels() -> None:
    # With R1 - R0 = 3, P(y = 1) = sigmoid(3) (1 - 0.1) + (1 - sigmoid(3)) 0.1.
    n = 20_000
    teacher = make_teacher("noisy+mistake", np.random.default_rng(6))
    labels = teacher.label_returns(np.zeros((n, 1)), np.full((n, 1), 3.0))
    p = 1.0 / (1.0 + math.exp(-3.0))
    expected = p * 0.9 + (1.0 - p) * 0.1
    assert abs(labels.mean() - expected) < 4.0 * math.sqrt(expected * (1 - expected) / n)


# --- myopic ------------------------------------------------------------------------------------


def test_myopic_prefers_recent_reward() -> None:
    # Undiscounted: 10 > 9 prefers seg0. Myopic (gamma 0.9, H 3): 0.81 * 10 = 8.1 < 9 -> seg1.
    pairs = [(_segment([10.0, 0.0, 0.0]), _segment([0.0, 0.0, 9.0]))]
    assert make_teacher("oracle", np.random.default_rng(0)).label(pairs)[0].label == 0.0
    assert make_teacher("myopic", np.random.default_rng(0)).label(pairs)[0].label == 1.0


@pytest.mark.parametrize(("step", "weight"), [(0, 0.81), (1, 0.9), (2, 1.0)])
def test_myopic_weights_are_gamma_to_the_steps_before_the_end(step: int, weight: float) -> None:
    # seg0 has reward 1 at `step` only (myopic return = weight); seg1 puts x on the last step.
    teacher = make_teacher("myopic", np.random.default_rng(0))
    rewards0 = np.zeros((2, 3))
    rewards0[:, step] = 1.0
    rewards1 = np.zeros((2, 3))
    rewards1[:, 2] = [weight - 0.01, weight + 0.01]
    np.testing.assert_array_equal(teacher.label_returns(rewards0, rewards1), [0.0, 1.0])


def test_myopic_needs_one_segment_length() -> None:
    pairs = [(_segment([1.0, 2.0]), _segment([1.0, 2.0, 3.0]))]
    with pytest.raises(ValueError, match="one segment length"):
        make_teacher("myopic", np.random.default_rng(0)).label(pairs)


# --- skip and equal thresholds -----------------------------------------------------------------


def test_adapt_applies_eps_once() -> None:
    teacher = make_teacher("skip+equal", np.random.default_rng(0), eps_equal=0.2)
    assert teacher.thresholds is None
    for _ in range(2):  # a second round must not multiply eps in again (BPref's bug)
        teacher.adapt(mean_episode_return=400.0, episode_length=1000, segment_length=50)
        assert teacher.thresholds == Thresholds(
            skip=0.1 * 400 * 50 / 1000, equal=0.2 * 400 * 50 / 1000
        )
    with pytest.raises(ValueError, match="positive"):
        teacher.adapt(1.0, episode_length=0, segment_length=50)
    with pytest.raises(ValueError, match="finite"):
        teacher.adapt(math.nan, episode_length=10, segment_length=5)


def test_skip_keeps_only_pairs_above_the_threshold() -> None:
    teacher = make_teacher("skip", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=100.0, episode_length=100, segment_length=10)  # delta 1.0
    assert teacher.thresholds.skip == pytest.approx(1.0)
    # max(R0, R1): 0.5, 0.75, 1.0 (not strictly above) -> skipped; 1.5, 3.0 -> kept.
    rewards0 = np.array([[0.5], [0.75], [1.0], [1.5], [-3.0]])
    rewards1 = np.array([[0.25], [-2.0], [0.0], [0.5], [3.0]])
    comparisons = teacher.label(_pairs(rewards0, rewards1))
    assert [c.label for c in comparisons] == [None, None, None, 0.0, 1.0]
    assert sum(c.skipped for c in comparisons) == 3


def test_equal_marks_close_pairs_half() -> None:
    teacher = make_teacher("equal", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=100.0, episode_length=100, segment_length=10)  # delta 1.0
    rewards0 = np.array([[0.0], [0.0], [5.0], [0.0], [2.0]])
    rewards1 = np.array([[0.5], [-0.9], [3.0], [1.0], [2.0]])  # |diff| 0.5, 0.9, 2, 1, 0
    labels = teacher.label_returns(rewards0, rewards1)
    np.testing.assert_array_equal(labels, [0.5, 0.5, 0.0, 1.0, 0.5])


def test_equal_overrides_noise_and_mistakes_and_skip_wins() -> None:
    teacher = make_teacher("noisy+mistake+skip+equal", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=100.0, episode_length=100, segment_length=10)  # deltas 1.0
    n = 1000
    rewards0 = np.full((n, 1), 2.0)
    rewards1 = np.full((n, 1), 2.5)  # kept (max 2.5 > 1) and equal (|diff| 0.5 < 1)
    np.testing.assert_array_equal(teacher.label_returns(rewards0, rewards1), np.full(n, 0.5))
    below = teacher.label_returns(np.full((n, 1), 0.2), np.full((n, 1), 0.4))  # skip beats equal
    assert np.all(np.isnan(below))


def test_skip_and_equal_use_undiscounted_returns() -> None:
    teacher = make_teacher("myopic+skip", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=100.0, episode_length=100, segment_length=10)  # delta 1.0
    # Undiscounted max 1.1 > 1 keeps the pair although its myopic return is only 0.81 * 1.1.
    labels = teacher.label_returns(np.array([[1.1, 0.0, 0.0]]), np.zeros((1, 3)))
    np.testing.assert_array_equal(labels, [0.0])


def test_thresholds_before_adapt_come_from_the_batch() -> None:
    teacher = make_teacher("skip", np.random.default_rng(0))
    # Mean segment return (0.5 + 0.8 + 19 + 19.7) / 4 = 10 -> delta_skip = 0.1 * 10 = 1.0.
    labels = teacher.label_returns(np.array([[0.5], [19.0]]), np.array([[0.8], [19.7]]))
    assert np.isnan(labels[0]) and labels[1] == 1.0
    assert teacher.thresholds is None


def test_zero_eps_disables_skip_and_equal() -> None:
    teacher = make_teacher("oracle", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=1e6, episode_length=10, segment_length=10)
    labels = teacher.label_returns(np.array([[0.0], [1.0]]), np.array([[1.0], [1.0]]))
    np.testing.assert_array_equal(labels, [1.0, 0.5])
    assert hasattr(teachers, "__all__") and "make_teacher" in teachers.__all__


def test_equal_threshold_is_positive_for_tasks_with_costs():
    """With negative returns (Pendulum-like costs) 'equally good' must still be possible."""
    teacher = make_teacher("equal", np.random.default_rng(0))
    teacher.adapt(mean_episode_return=-1000.0, episode_length=200, segment_length=50)
    assert teacher.thresholds.equal == pytest.approx(0.1 * 1000.0 * 50 / 200)
    assert teacher.thresholds.skip == 0.0
    rewards0 = np.full((1, 50), -1.0)
    rewards1 = np.full((1, 50), -1.1)  # returns differ by 5 < 25: equally good
    assert teacher.label_returns(rewards0, rewards1)[0] == 0.5


def test_parameters_in_parentheses_set_a_preset_field() -> None:
    teacher = make_teacher("mistake(eps_mistake=0.2)", np.random.default_rng(0))
    assert teacher.config == TeacherConfig(name="mistake(eps_mistake=0.2)", eps_mistake=0.2)
    mixed = make_teacher("noisy(beta=2)+mistake(eps_mistake=0.3)", np.random.default_rng(0))
    assert (mixed.config.beta, mixed.config.eps_mistake) == (2.0, 0.3)
    # The name an override records reads back as the same teacher.
    renamed = make_teacher("noisy", np.random.default_rng(0), beta=2.0)
    assert make_teacher(renamed.name, np.random.default_rng(0)).config.beta == 2.0
    flips = make_teacher("mistake(eps_mistake=0.4)", np.random.default_rng(1))
    pairs = [(_segment([1.0]), _segment([0.0]))] * 2000
    wrong = np.mean([c.label == 1.0 for c in flips.label(pairs)])  # the first is better
    assert 0.37 < wrong < 0.43


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            "mistake(eps_mistak=0.2)",
            "unknown parameter 'eps_mistak'; valid ones are beta, eps_equal",
        ),
        ("mistake(eps_mistake=lots)", "eps_mistake must be a number"),
        ("mistake(eps_mistake=1.5)", r"eps_mistake must be in \[0, 1\)"),
        ("mistake(eps_mistake=0.2)+mistake", "sets eps_mistake twice"),
        ("mistake(eps_mistake=0.2", "unknown teacher 'mistake\\(eps_mistake=0.2'"),
    ],
)
def test_bad_parameters_are_refused_with_the_fix(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_teacher(spec, np.random.default_rng(0))
