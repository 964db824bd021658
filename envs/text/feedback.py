"""Text feedback: simulated annotators that compare two completions of one prompt.

A text comparison is a pair of one-step :class:`~prefenv.records.Segment` records whose
``context`` holds ``{"prompt": ..., "completion": ...}`` and whose single step's
``true_rewards`` is the task's true score of the whole text (the episode's terminal reward, as
:class:`~envs.text.token_env.TextGenerationEnv` pays it). ``obs`` and ``acts`` carry no features
(shapes ``[2, 0]`` and ``[1, 0]``), the same text-only form :func:`prefenv.jsonl.import_jsonl`
gives a plain preference dataset, so text comparisons go into
:class:`~prefenv.store.ComparisonStore` and out through :func:`prefenv.jsonl.export_jsonl` as
``prompt`` / ``chosen`` / ``rejected`` unchanged.

:class:`TextTeacher` labels such pairs with B-Pref's simulated human
(:meth:`prefenv.teachers.SyntheticTeacher.label_returns`: skip, equal, rationality ``beta``,
mistakes) applied to a *perceived* score, plus the biases real annotators show:

- **verbosity**: the perceived score gains ``verbosity * n_words`` (longer looks better);
- **position**: with probability ``position_bias`` the annotator prefers whichever completion is
  shown first, whatever the content (applied to answered, i.e. non-skipped, queries);
- **population**: several annotators weigh score components differently
  (``perceived = sum_k w_k * component_k``); each query goes to one annotator drawn uniformly,
  and the comparison's ``teacher`` is ``"<teacher>/<annotator>"`` so disagreement stays visible.

The component ``"score"`` is always the segment's true return (the hidden task score); other
components are scorers of ``(prompt, completion)`` (default: :data:`DEFAULT_COMPONENTS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from envs.text.scorers import Conciseness, Scorer, VaderSentiment, words
from prefenv.records import Comparison, Segment
from prefenv.teachers import PRESETS, SyntheticTeacher, TeacherConfig, merge_presets
from prefenv.text_records import segment_texts, text_segment

__all__ = [
    "segment_texts",
    "DEFAULT_COMPONENTS",
    "POPULATION",
    "SCORE",
    "TEXT_PRESETS",
    "Annotator",
    "TextTeacher",
    "TextTeacherConfig",
    "WordCount",
    "make_text_teacher",
    "text_pair",
    "text_pairs",
    "text_segment",
]

SCORE = "score"
"""The component name of the true score (read from ``Segment.true_rewards``)."""


class WordCount:
    """Number of words in the completion (a score component for length-loving annotators)."""

    def __call__(self, prompt: str, completion: str) -> float:
        return float(len(words(completion)))


DEFAULT_COMPONENTS: Mapping[str, Scorer] = {
    "sentiment": VaderSentiment(),
    "length": WordCount(),
    "concise": Conciseness(),
}
"""Components an annotator may weigh besides ``"score"``."""


def text_pair(
    prompt: str, completion0: str, completion1: str, scorer: Scorer
) -> tuple[Segment, Segment]:
    """Two segments for one prompt, each scored by ``scorer(prompt, completion)``."""
    return (
        text_segment(prompt, completion0, float(scorer(prompt, completion0))),
        text_segment(prompt, completion1, float(scorer(prompt, completion1))),
    )


def text_pairs(
    prompts: Sequence[str],
    completions0: Sequence[str],
    completions1: Sequence[str],
    scorer: Scorer,
) -> list[tuple[Segment, Segment]]:
    """:func:`text_pair` for ``N`` aligned prompts and completion pairs."""
    if not len(prompts) == len(completions0) == len(completions1):
        raise ValueError(
            f"need one prompt per completion pair, got {len(prompts)} prompts, "
            f"{len(completions0)} first and {len(completions1)} second completions"
        )
    return [
        text_pair(p, c0, c1, scorer)
        for p, c0, c1 in zip(prompts, completions0, completions1, strict=True)
    ]


@dataclass(frozen=True)
class Annotator:
    """One member of an annotator population.

    Attributes:
        name: recorded as ``"<teacher>/<name>"`` on the comparisons this annotator labels.
        weights: component name -> weight; the perceived score is ``sum_k w_k * component_k``.
            ``"score"`` is the true score, other names must be components of the teacher.
    """

    name: str
    weights: Mapping[str, float] = field(default_factory=lambda: {SCORE: 1.0})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(
                f"annotator name must be a non-empty string without '/', got {self.name!r}"
            )
        if not self.weights:
            raise ValueError(f"annotator {self.name!r} needs at least one component weight")
        bad = {k: v for k, v in self.weights.items() if not math.isfinite(float(v))}
        if bad:
            raise ValueError(f"annotator {self.name!r} has non-finite weights {bad}")
        object.__setattr__(self, "weights", {k: float(v) for k, v in self.weights.items()})


_FAITHFUL = (Annotator("faithful"),)


@dataclass(frozen=True)
class TextTeacherConfig:
    """Parameters of a :class:`TextTeacher`.

    Attributes:
        name: the teacher id on every comparison (``"<name>/<annotator>"`` for a population).
        bpref: B-Pref parameters (rationality ``beta``, ``eps_mistake``, ``eps_skip``,
            ``eps_equal``) applied to the perceived scores; its own ``name`` is ignored.
        verbosity: perceived score bonus per completion word.
        position_bias: probability in ``[0, 1)`` of preferring the first-shown completion
            regardless of content.
        annotators: the population; one query goes to one annotator drawn uniformly.
    """

    name: str = "oracle"
    bpref: TeacherConfig = field(default_factory=TeacherConfig)
    verbosity: float = 0.0
    position_bias: float = 0.0
    annotators: tuple[Annotator, ...] = _FAITHFUL

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"teacher name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.bpref, TeacherConfig):
            raise TypeError(f"bpref must be a TeacherConfig, got {type(self.bpref).__name__}")
        if not math.isfinite(self.verbosity):
            raise ValueError(f"verbosity must be finite, got {self.verbosity}")
        if not 0.0 <= self.position_bias < 1.0:
            raise ValueError(
                f"position_bias must be in [0, 1) (0 disables it), got {self.position_bias}"
            )
        annotators = tuple(self.annotators)
        if not annotators or not all(isinstance(a, Annotator) for a in annotators):
            raise ValueError("annotators must be a non-empty sequence of Annotator")
        names = [a.name for a in annotators]
        if len(set(names)) != len(names):
            raise ValueError(f"annotator names must be unique, got {names}")
        object.__setattr__(self, "annotators", annotators)

    @property
    def components(self) -> set[str]:
        """Component names the annotators weigh (``"score"`` included when used)."""
        return {k for a in self.annotators for k in a.weights}


POPULATION: tuple[Annotator, ...] = (
    Annotator("faithful", {SCORE: 1.0}),
    Annotator("wordy", {SCORE: 1.0, "length": 0.1}),
    Annotator("upbeat", {SCORE: 0.5, "sentiment": 1.0}),
    Annotator("terse", {SCORE: 1.0, "concise": 1.0}),
)
"""Default population: one faithful annotator and three with a pet criterion."""

# Text scores live in about [-1, 1], an order of magnitude below B-Pref's segment returns, so the
# text "noisy" preset uses beta = 10 (a 0.1 score gap -> 73 % preference) instead of B-Pref's 1.
TEXT_PRESETS: dict[str, TextTeacherConfig] = {
    "oracle": TextTeacherConfig(name="oracle"),
    "noisy": TextTeacherConfig(name="noisy", bpref=TeacherConfig(beta=10.0)),
    "mistake": TextTeacherConfig(name="mistake", bpref=PRESETS["mistake"]),
    "skip": TextTeacherConfig(name="skip", bpref=PRESETS["skip"]),
    "equal": TextTeacherConfig(name="equal", bpref=PRESETS["equal"]),
    "verbose": TextTeacherConfig(name="verbose", verbosity=0.05),
    "position": TextTeacherConfig(name="position", position_bias=0.2),
    "population": TextTeacherConfig(name="population", annotators=POPULATION),
}
"""Text teacher presets; combine with ``'+'`` (``"noisy+verbose+population"``): the core's
:func:`prefenv.teachers.merge_presets` merges them, the nested ``bpref`` field by field."""


def make_text_teacher(
    spec: str | TextTeacherConfig,
    scorer: Scorer | None,
    rng: np.random.Generator,
    components: Mapping[str, Scorer] | None = None,
) -> TextTeacher:
    """Build a :class:`TextTeacher` from a preset name, a '+'-composition or a config.

    Args:
        spec: ``"oracle"``, ``"noisy"``, ``"mistake"``, ``"skip"``, ``"equal"``, ``"verbose"``,
            ``"position"``, ``"population"``, presets joined by ``'+'``, or a config.
        scorer: the task's true score, used by :meth:`TextTeacher.label_texts` (None: only
            :meth:`TextTeacher.label` on already scored segments).
        rng: the teacher's only source of randomness.
        components: scorers the annotators may weigh; None = :data:`DEFAULT_COMPONENTS`.
    """
    config = (
        spec
        if isinstance(spec, TextTeacherConfig)
        else merge_presets(spec, TEXT_PRESETS, kind="text teacher")
    )
    return TextTeacher(config, rng, scorer=scorer, components=components)


class TextTeacher:
    """Simulated text annotator(s) with B-Pref noise and verbosity / position / population biases.

    Implements the :class:`prefenv.teachers.Teacher` protocol (``label(pairs)``) for text
    segments, and :meth:`label_texts` for raw ``(prompt, completion0, completion1)`` triples.

    Args:
        config: parameters (see :class:`TextTeacherConfig`).
        rng: the only source of randomness (annotator draws, B-Pref noise, position bias).
        scorer: the true score for :meth:`label_texts`; None if only :meth:`label` is used.
        components: scorers the annotators weigh besides ``"score"``; None =
            :data:`DEFAULT_COMPONENTS`.
    """

    def __init__(
        self,
        config: TextTeacherConfig,
        rng: np.random.Generator,
        scorer: Scorer | None = None,
        components: Mapping[str, Scorer] | None = None,
    ) -> None:
        if not isinstance(config, TextTeacherConfig):
            raise TypeError(f"config must be a TextTeacherConfig, got {type(config).__name__}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
            )
        components = dict(DEFAULT_COMPONENTS if components is None else components)
        if SCORE in components:
            raise ValueError(f"component name {SCORE!r} is reserved for the true score")
        missing = sorted(config.components - {SCORE} - set(components))
        if missing:
            raise ValueError(
                f"annotators weigh components {missing} that are not given: pass scorers for them "
                f"in components (available: {sorted(components)})"
            )
        self.config = config
        self.name = config.name
        self.scorer = scorer
        self.components = components
        self._rng = rng
        self._core = SyntheticTeacher(replace(config.bpref, name=config.name), rng)

    def __repr__(self) -> str:
        return f"TextTeacher({self.config!r})"

    def adapt(
        self, mean_episode_return: float, episode_length: int = 1, segment_length: int = 1
    ) -> None:
        """Scale the skip / equal thresholds (see :meth:`SyntheticTeacher.adapt`)."""
        self._core.adapt(mean_episode_return, episode_length, segment_length)

    def perceived_scores(
        self, segments: Sequence[Segment], annotators: Sequence[int]
    ) -> np.ndarray:
        """``[N]`` float64 score each segment has for the annotator at the same index."""
        out = np.zeros(len(segments), dtype=np.float64)
        needs_text = self.config.verbosity != 0.0 or self.config.components != {SCORE}
        for i, (segment, index) in enumerate(zip(segments, annotators, strict=True)):
            weights = self.config.annotators[index].weights
            prompt, completion = segment_texts(segment, f"segment {i}") if needs_text else ("", "")
            value = 0.0
            for key, weight in weights.items():
                part = (
                    segment.true_return
                    if key == SCORE
                    else self.components[key](prompt, completion)
                )
                value += weight * float(part)
            if self.config.verbosity:
                value += self.config.verbosity * len(words(completion))
            out[i] = value
        return out

    def label(self, pairs: Sequence[tuple[Segment, Segment]]) -> list[Comparison]:
        """Label ``N`` text segment pairs; skipped ones come back with ``label=None``.

        Order: draw an annotator per pair -> perceived scores (weighted components +
        ``verbosity * n_words``) -> B-Pref labelling of the one-step perceived returns -> position
        bias (answered queries only: label ``0.0`` with probability ``position_bias``).
        """
        if not pairs:
            return []
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(s, Segment) for s in pair):
                raise TypeError(f"pair {i} must be a (Segment, Segment) tuple, got {pair!r}")
        n = len(pairs)
        population = self.config.annotators
        drawn = (
            self._rng.integers(len(population), size=n)
            if len(population) > 1
            else np.zeros(n, dtype=np.int64)
        )
        perceived0 = self.perceived_scores([p[0] for p in pairs], drawn.tolist())
        perceived1 = self.perceived_scores([p[1] for p in pairs], drawn.tolist())
        labels = self._core.label_returns(perceived0[:, None], perceived1[:, None])
        if self.config.position_bias > 0.0:
            first = (self._rng.random(n) < self.config.position_bias) & ~np.isnan(labels)
            labels[first] = 0.0
        names = [self.name if len(population) == 1 else f"{self.name}/{a.name}" for a in population]
        return [
            Comparison(
                segment0=s0,
                segment1=s1,
                label=None if math.isnan(y) else float(y),
                teacher=names[k],
            )
            for (s0, s1), y, k in zip(pairs, labels.tolist(), drawn.tolist(), strict=True)
        ]

    def label_texts(
        self,
        prompts: Sequence[str],
        completions0: Sequence[str],
        completions1: Sequence[str],
    ) -> list[Comparison]:
        """Score ``N`` completion pairs with the true scorer and label them (see :meth:`label`)."""
        if self.scorer is None:
            raise ValueError(
                "this TextTeacher has no true scorer: pass scorer= (e.g. VaderSentiment()) to "
                "make_text_teacher, or score segments yourself and call label(pairs)"
            )
        return self.label(text_pairs(prompts, completions0, completions1, self.scorer))
