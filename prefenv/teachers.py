"""Synthetic teachers: B-Pref's simulated human, vectorised.

A teacher looks at two segments ``sigma0`` and ``sigma1`` of ``H`` steps each and answers which one
it prefers. Label ``1.0`` means ``sigma1`` is preferred, ``0.0`` means ``sigma0`` is, ``0.5`` means
"equally good" and ``None`` (``NaN`` in the vectorised core) means the query was skipped; a skipped
query still counts against the query budget.

The synthetic teacher follows B-Pref (Lee et al. 2021, rll-research/BPref ``reward_model.py``,
``get_label``) step by step, with the true per-step rewards ``r_t`` of each segment:

1. **skip**: keep the pair only if ``max(R0, R1) > delta_skip`` (undiscounted returns).
2. **equal mask**: mark pairs with ``|R0 - R1| < delta_equal`` (undiscounted returns).
3. **myopic return**: ``R = sum_{t=1..H} gamma^(H-t) r_t``; the most recent step has weight 1.
4. **label**: perfectly rational (``beta <= 0`` or ``inf``): ``1[R1 > R0]`` with exact ties at 0.5
   (B-Pref sends ties to ``sigma0``); otherwise ``y ~ Bernoulli(sigmoid(beta (R1 - R0)))``.
5. **mistake**: flip ``y`` with probability ``eps_mistake``.
6. **equal override**: masked pairs get ``y = 0.5``.

The thresholds follow the policy: before each feedback round call :meth:`SyntheticTeacher.adapt`
with the mean true return of recent episodes; ``delta = eps * mean * H / T``.

Presets combine with ``'+'`` through :func:`merge_presets`, the one preset merge (the text
teachers of ``envs.text.feedback`` merge theirs with it too). This module is over 400 lines: the
teacher protocol, B-Pref's teacher, its presets and their merge are one unit, and the merge
reads the presets' dataclasses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

from prefenv.records import Comparison, Segment

__all__ = [
    "PRESETS",
    "SyntheticTeacher",
    "Teacher",
    "TeacherConfig",
    "Thresholds",
    "make_teacher",
    "merge_presets",
]


@dataclass(frozen=True)
class TeacherConfig:
    """Parameters of a B-Pref simulated teacher.

    Attributes:
        name: recorded as :attr:`prefenv.records.Comparison.teacher` on every label.
        beta: rationality; ``P(sigma1 > sigma0) = sigmoid(beta (R1 - R0))``. ``beta <= 0`` or
            ``inf`` means perfectly rational (always prefers the higher return).
        gamma: myopia in ``(0, 1]``; step ``t`` of ``H`` is weighted ``gamma^(H-t)``.
        eps_mistake: probability in ``[0, 1)`` of flipping a label.
        eps_skip: skip-threshold scale in ``[0, 1)``; ``0`` disables skipping.
        eps_equal: equal-threshold scale in ``[0, 1)``; ``0`` disables "equally good" answers.
    """

    name: str = "oracle"
    beta: float = math.inf
    gamma: float = 1.0
    eps_mistake: float = 0.0
    eps_skip: float = 0.0
    eps_equal: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"teacher name must be a non-empty string, got {self.name!r}")
        if math.isnan(self.beta):
            raise ValueError(
                "beta is NaN: use inf (or any value <= 0) for a perfectly rational teacher"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(
                f"gamma must be in (0, 1] (1 = not myopic, B-Pref's myopic preset uses 0.9), "
                f"got {self.gamma}"
            )
        for attr in ("eps_mistake", "eps_skip", "eps_equal"):
            value = getattr(self, attr)
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"{attr} must be in [0, 1) (0 disables it, B-Pref presets use 0.1), got {value}"
                )

    @property
    def rational(self) -> bool:
        """True when labels are deterministic functions of the returns (``beta <= 0`` or ``inf``)."""
        return self.beta <= 0.0 or math.isinf(self.beta)


# B-Pref's six presets (Lee et al. 2021, Table 1; see REFERENCES.md).
PRESETS: dict[str, TeacherConfig] = {
    "oracle": TeacherConfig(name="oracle"),
    "noisy": TeacherConfig(name="noisy", beta=1.0),
    "mistake": TeacherConfig(name="mistake", eps_mistake=0.1),
    "skip": TeacherConfig(name="skip", eps_skip=0.1),
    "myopic": TeacherConfig(name="myopic", gamma=0.9),
    "equal": TeacherConfig(name="equal", eps_equal=0.1),
}


class Thresholds(NamedTuple):
    """Absolute return thresholds set by :meth:`SyntheticTeacher.adapt`.

    Attributes:
        skip: ``delta_skip``; a pair is skipped unless ``max(R0, R1) > skip``.
        equal: ``delta_equal``; a pair is "equally good" when ``|R0 - R1| < equal``.
    """

    skip: float
    equal: float


@runtime_checkable
class Teacher(Protocol):
    """Anything that labels segment pairs: a synthetic teacher, a text annotator, a human queue.

    A class that subclasses ``Teacher`` explicitly inherits the no-op :meth:`adapt`; one that
    implements the protocol structurally defines ``adapt`` itself.
    """

    name: str

    def label(self, pairs: Sequence[tuple[Segment, Segment]]) -> list[Comparison]:
        """Label each pair; skipped pairs come back with ``label=None``, in the same order."""
        ...

    def adapt(self, mean_episode_return: float, episode_length: int, segment_length: int) -> None:
        """Follow the policy's current returns before a feedback round (the preference loop calls
        it with the last 10 episodes' mean true return and length). Default: nothing to adapt;
        :meth:`SyntheticTeacher.adapt` rescales its skip and equal thresholds."""
        return None


PresetConfig = TypeVar("PresetConfig")


def _changes(config: Any, default: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{field path: value}`` of the fields where ``config`` differs from ``default``.

    Nested dataclass fields (a text teacher's B-Pref ``bpref``) are compared field by field;
    ``name`` fields are not parameters and never count.
    """
    changed: dict[tuple[str, ...], Any] = {}
    for f in fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if f.name == "name":
            continue
        if is_dataclass(value) and type(value) is type(base):
            changed.update(_changes(value, base, (*path, f.name)))
        elif value != base:
            changed[(*path, f.name)] = value
    return changed


def _apply(default: Any, changes: dict[tuple[str, ...], Any], name: str) -> Any:
    """``default`` with ``changes`` applied at their paths and every ``name`` field set to ``name``."""
    values: dict[str, Any] = {}
    for f in fields(default):
        base = getattr(default, f.name)
        if f.name == "name":
            values[f.name] = name
        elif (f.name,) in changes:
            values[f.name] = changes[(f.name,)]
        elif is_dataclass(base):
            inner = {path[1:]: v for path, v in changes.items() if path[0] == f.name}
            values[f.name] = _apply(base, inner, name)
    return replace(default, **values)


def _field_paths(config: Any, prefix: str = "") -> list[str]:
    """Dotted names of ``config``'s parameters (nested dataclasses field by field; no ``name``)."""
    paths: list[str] = []
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            paths += _field_paths(value, f"{prefix}{f.name}.")
        elif f.name != "name" and isinstance(value, int | float):
            paths.append(prefix + f.name)
    return paths


_PART = re.compile(r"(\w+)(?:\((.*)\))?")
"""One part of a preset spec: ``name`` or ``name(key=value, ...)``."""


def _parameters(
    text: str | None, default: Any, part: str, kind: str
) -> dict[tuple[str, ...], float]:
    """``{field path: value}`` of a part's ``key=value`` list (``bpref.beta`` for nested fields).

    Raises:
        ValueError: an unknown key, or a value that is not a number.
    """
    if not text:
        return {}
    valid = set(_field_paths(default))
    values: dict[tuple[str, ...], float] = {}
    for item in text.split(","):
        key, _, raw = (word.strip() for word in item.partition("="))
        if key not in valid:
            raise ValueError(
                f"{kind} {part!r}: unknown parameter {key!r}; valid ones are "
                f"{', '.join(sorted(valid))}"
            )
        try:
            values[tuple(key.split("."))] = float(raw)
        except ValueError:
            raise ValueError(
                f"{kind} {part!r}: {key} must be a number (e.g. {key}=0.2), got {raw!r}"
            ) from None
    return values


def merge_presets(
    spec: str, presets: Mapping[str, PresetConfig], kind: str = "teacher"
) -> PresetConfig:
    """The config of a '+'-joined preset spec such as ``"noisy+mistake"`` (the one preset merge).

    Each named preset contributes the fields where it differs from its class's default
    (``type(preset)()``); nested dataclass fields merge field by field; the result's ``name``
    fields (nested ones included) are the spec. Synthetic teachers merge
    :data:`PRESETS`; text teachers (``envs.text.feedback``) merge theirs with this too.

    Args:
        spec: preset names joined by ``'+'``, each with optional numeric parameters in
            parentheses: ``"mistake(eps_mistake=0.2)"``, ``"noisy(beta=2)+skip"``; a nested
            field is dotted (a text teacher's ``"oracle(bpref.eps_mistake=0.2)"``).
        presets: name -> config (frozen dataclasses of one class, constructible without arguments).
        kind: what the presets configure, for error messages (``"teacher"``, ``"text teacher"``).

    Raises:
        ValueError: an unknown preset, or two presets setting one parameter to different values.
    """
    parts = [part.strip() for part in re.split(r"\+(?![^()]*\))", spec)]
    named = [_PART.fullmatch(part) for part in parts]
    unknown = [part for part, m in zip(parts, named, strict=True) if not m or m[1] not in presets]
    if unknown:
        names = list(presets)
        raise ValueError(
            f"unknown {kind} {unknown[0]!r}: choose one of {', '.join(names)} "
            f"or combine them with '+' (e.g. '{'+'.join(names[1:3])}'); set parameters in "
            f"parentheses (e.g. '{names[0]}({_field_paths(presets[names[0]])[0]}=1.0)')"
        )
    default = type(presets[named[0][1]])()
    merged: dict[tuple[str, ...], Any] = {}
    source: dict[tuple[str, ...], str] = {}
    for part, m in zip(parts, named, strict=True):
        changes = _changes(presets[m[1]], default)
        changes.update(_parameters(m[2], default, part, kind))
        for path, value in changes.items():
            if path in merged and merged[path] != value:
                raise ValueError(
                    f"{kind} {spec!r} sets {path[-1]} twice: {merged[path]} by "
                    f"{source[path]!r} and {value} by {part!r}; combine presets that change "
                    "different parameters"
                )
            merged[path], source[path] = value, part
    try:
        return _apply(default, merged, "+".join(parts))
    except ValueError as error:  # a parameter out of range: say which spec set it
        raise ValueError(f"{kind} {spec!r}: {error}") from None


def make_teacher(
    spec: str | TeacherConfig, rng: np.random.Generator, **overrides: Any
) -> SyntheticTeacher:
    """Build a synthetic teacher from a preset name, a '+'-composition or a config.

    Args:
        spec: a preset name (``"oracle"``, ``"noisy"``, ``"mistake"``, ``"skip"``, ``"myopic"``,
            ``"equal"``), presets joined by ``'+'`` (``"noisy+mistake"``: the non-default
            parameters of each are merged; two presets setting one parameter is an error), or a
            :class:`TeacherConfig`.
        rng: the only source of randomness the teacher uses.
        **overrides: :class:`TeacherConfig` fields to replace, e.g. ``beta=2.0``. Unless ``name``
            is among them, the recorded name gains a suffix such as ``"noisy(beta=2.0)"``.

    Returns:
        The teacher.

    Raises:
        ValueError: unknown preset, conflicting composition or invalid parameter.
    """
    config = spec if isinstance(spec, TeacherConfig) else merge_presets(spec, PRESETS)
    if overrides:
        valid = {f.name for f in fields(TeacherConfig)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(
                f"unknown teacher parameter(s) {bad}: valid ones are {', '.join(sorted(valid))}"
            )
        if "name" not in overrides:
            suffix = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
            overrides = {**overrides, "name": f"{config.name}({suffix})"}
        config = replace(config, **overrides)
    return SyntheticTeacher(config, rng)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function: ``exp(-log(1 + exp(-x)))``."""
    return np.exp(-np.logaddexp(0.0, -x))


def _stack_rewards(segments: Sequence[Segment], pad_to: int) -> np.ndarray:
    """``[N, pad_to]`` float64 rewards, zero-padded at the end (only valid when gamma == 1)."""
    out = np.zeros((len(segments), pad_to), dtype=np.float64)
    for i, segment in enumerate(segments):
        out[i, : len(segment)] = segment.true_rewards
    return out


class SyntheticTeacher:
    """B-Pref's simulated teacher (see the module docstring for the exact order of operations).

    Args:
        config: the teacher's parameters.
        rng: the only source of randomness (Bernoulli labels and mistakes).
    """

    def __init__(self, config: TeacherConfig, rng: np.random.Generator) -> None:
        if not isinstance(config, TeacherConfig):
            raise TypeError(f"config must be a TeacherConfig, got {type(config).__name__}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
            )
        self.config = config
        self.name = config.name
        self._rng = rng
        self._thresholds: Thresholds | None = None

    def __repr__(self) -> str:
        return f"SyntheticTeacher({self.config!r}, thresholds={self._thresholds})"

    @property
    def thresholds(self) -> Thresholds | None:
        """The thresholds set by the last :meth:`adapt`, or ``None`` before the first call."""
        return self._thresholds

    def adapt(self, mean_episode_return: float, episode_length: int, segment_length: int) -> None:
        """Scale the skip and equal thresholds to the current policy's returns.

        Sets ``delta = eps * mean_episode_return * H / T`` for skip and equal, as B-Pref does before
        every feedback round (``mean_episode_return`` is usually the mean true return of the last
        10 episodes). B-Pref's ``train_PEBBLE.py`` passes ``eps * margin`` to setters that multiply
        by ``eps`` again, so after its first round the thresholds shrink to ``eps^2 * margin``;
        this method applies ``eps`` exactly once, every time.

        The skip threshold keeps the sign of the mean return, as in B-Pref (with negative
        rewards it skips segments whose return is below that negative level). The equal
        threshold bounds a *difference* of returns, so it uses ``|mean|``: B-Pref's tasks have
        positive rewards, where the two agree, and a negative bound would make "equally good"
        impossible on tasks with costs (Pendulum, Reacher).

        Args:
            mean_episode_return: mean undiscounted true return of recent episodes.
            episode_length: ``T``, steps per episode.
            segment_length: ``H``, steps per segment.
        """
        if not math.isfinite(mean_episode_return):
            raise ValueError(f"mean_episode_return must be finite, got {mean_episode_return}")
        if episode_length <= 0 or segment_length <= 0:
            raise ValueError(
                f"episode_length and segment_length must be positive, got {episode_length} "
                f"and {segment_length}"
            )
        margin = float(mean_episode_return) * segment_length / episode_length
        self._thresholds = Thresholds(
            skip=self.config.eps_skip * margin, equal=self.config.eps_equal * abs(margin)
        )

    def _current_thresholds(self, returns0: np.ndarray, returns1: np.ndarray) -> Thresholds:
        """Thresholds from :meth:`adapt`, or batch-relative ones before it was ever called.

        Before the first :meth:`adapt` the reference is the mean undiscounted return of all ``2N``
        segments in the batch. A segment's return already is the per-segment scale that
        ``mean_episode_return * H / T`` estimates, so ``delta = eps * mean(segment returns)``.
        """
        if self._thresholds is not None:
            return self._thresholds
        if self.config.eps_skip == 0.0 and self.config.eps_equal == 0.0:
            return Thresholds(skip=0.0, equal=0.0)
        margin = float(np.mean(np.concatenate([returns0, returns1]))) if len(returns0) else 0.0
        return Thresholds(
            skip=self.config.eps_skip * margin, equal=self.config.eps_equal * abs(margin)
        )

    def label_returns(self, rewards0: np.ndarray, rewards1: np.ndarray) -> np.ndarray:
        """Vectorised B-Pref labelling of ``N`` pairs from their per-step true rewards.

        Args:
            rewards0: ``[N, H]`` true rewards of the first segments.
            rewards1: ``[N, H]`` true rewards of the second segments.

        Returns:
            ``[N]`` float64 labels: ``1.0`` = second segment preferred, ``0.0`` = first, ``0.5`` =
            equally good, ``NaN`` = skipped.
        """
        rewards0 = np.asarray(rewards0, dtype=np.float64)
        rewards1 = np.asarray(rewards1, dtype=np.float64)
        if rewards0.ndim != 2 or rewards0.shape != rewards1.shape:
            raise ValueError(
                f"rewards0 and rewards1 must both be [N, H] arrays of one shape, got "
                f"{rewards0.shape} and {rewards1.shape}"
            )
        n, horizon = rewards0.shape
        config = self.config
        returns0, returns1 = rewards0.sum(axis=1), rewards1.sum(axis=1)
        thresholds = self._current_thresholds(returns0, returns1)

        # 1. skip: both segments below the threshold (undiscounted returns).
        keep = np.ones(n, dtype=bool)
        if config.eps_skip > 0.0:
            keep = np.maximum(returns0, returns1) > thresholds.skip
        # 2. equal mask (undiscounted returns).
        equal = np.zeros(n, dtype=bool)
        if config.eps_equal > 0.0:
            equal = np.abs(returns0 - returns1) < thresholds.equal
        # 3. myopic return: step t = 1..H weighted gamma^(H - t), the last step weight 1.
        if config.gamma < 1.0:
            weights = config.gamma ** np.arange(horizon - 1, -1, -1, dtype=np.float64)
            returns0, returns1 = rewards0 @ weights, rewards1 @ weights
        # 4. label.
        diff = returns1 - returns0
        if config.rational:
            labels = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        else:
            prob = _sigmoid(config.beta * diff)
            labels = (self._rng.random(n) < prob).astype(np.float64)
        # 5. mistake: flip (ties at 0.5 stay 0.5).
        if config.eps_mistake > 0.0:
            flip = self._rng.random(n) < config.eps_mistake
            labels = np.where(flip, 1.0 - labels, labels)
        # 6. equal override, then skipped pairs.
        labels[equal] = 0.5
        labels[~keep] = np.nan
        return labels

    def label(self, pairs: Sequence[tuple[Segment, Segment]]) -> list[Comparison]:
        """Label segment pairs (see :meth:`label_returns`).

        Segments may differ in length only when ``gamma == 1`` (the myopic weights are tied to the
        segment's end, so they are undefined across lengths).

        Args:
            pairs: ``N`` pairs ``(sigma0, sigma1)``.

        Returns:
            ``N`` comparisons in the same order; ``label=None`` marks a skipped query.
        """
        if not pairs:
            return []
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(s, Segment) for s in pair):
                raise TypeError(f"pair {i} must be a (Segment, Segment) tuple, got {pair!r}")
        first = [pair[0] for pair in pairs]
        second = [pair[1] for pair in pairs]
        lengths = {len(s) for s in first} | {len(s) for s in second}
        if len(lengths) > 1 and self.config.gamma != 1.0:
            raise ValueError(
                f"segments have lengths {sorted(lengths)} but a myopic teacher (gamma="
                f"{self.config.gamma}) needs one segment length: sample fixed-length segments "
                "(cut_at_termination=False in sample_segment_pairs / PreferenceLoopConfig; on "
                "tasks that end early only windows cut at the end show what staying alive is "
                "worth) or use a teacher with gamma = 1"
            )
        horizon = max(lengths)
        labels = self.label_returns(_stack_rewards(first, horizon), _stack_rewards(second, horizon))
        return [
            Comparison(
                segment0=s0,
                segment1=s1,
                label=None if math.isnan(y) else float(y),
                teacher=self.name,
            )
            for s0, s1, y in zip(first, second, labels.tolist(), strict=True)
        ]
