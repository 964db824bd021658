"""Text teachers: B-Pref labels of (prompt, completion) pairs with annotator biases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.text.corpus import generate_corpus, generate_prompts
from envs.text.feedback import (
    POPULATION,
    TEXT_PRESETS,
    Annotator,
    TextTeacher,
    TextTeacherConfig,
    make_text_teacher,
    text_pair,
    text_pairs,
    text_segment,
)
from envs.text.scorers import VaderSentiment
from prefenv.jsonl import export_jsonl, import_jsonl
from prefenv.records import Segment
from prefenv.store import ComparisonStore
from prefenv.teachers import Teacher, TeacherConfig


def zero_score(prompt: str, completion: str) -> float:
    return 0.0


def filler(n_words: int) -> str:
    return " ".join(["word"] * n_words)


def binomial_tolerance(p: float, n: int, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def sentiment_pairs() -> tuple[list[str], list[str], list[str]]:
    texts = generate_corpus(400, seed=3)
    return generate_prompts(200, seed=4), texts[:200], texts[200:]


def test_text_segment_is_a_valid_one_step_segment():
    segment = text_segment("The plot was", "great fun.", 0.7)
    assert isinstance(segment, Segment)
    assert segment.obs.shape == (2, 0) and segment.acts.shape == (1, 0)
    assert segment.true_return == pytest.approx(0.7)
    assert dict(segment.context) == {"prompt": "The plot was", "completion": "great fun."}
    s0, s1 = text_pair("p", "good", "bad", VaderSentiment())
    assert s0.true_return > 0 > s1.true_return
    with pytest.raises(ValueError, match="one prompt per completion pair"):
        text_pairs(["p"], ["a", "b"], ["c", "d"], zero_score)
    with pytest.raises(TypeError, match="strings"):
        text_segment("p", 3, 0.0)  # type: ignore[arg-type]


def test_oracle_orders_by_true_score(sentiment_pairs):
    prompts, first, second = sentiment_pairs
    teacher = make_text_teacher("oracle", VaderSentiment(), np.random.default_rng(0))
    assert isinstance(teacher, Teacher)
    comparisons = teacher.label_texts(prompts, first, second)
    scorer = VaderSentiment()
    for prompt, c0, c1, comparison in zip(prompts, first, second, comparisons, strict=True):
        s0, s1 = scorer(prompt, c0), scorer(prompt, c1)
        expected = 1.0 if s1 > s0 else 0.0 if s0 > s1 else 0.5
        assert comparison.label == expected
        assert comparison.teacher == "oracle"
        assert comparison.segment0.context["completion"] == c0


def test_verbosity_prefers_longer_by_the_expected_amount():
    # Oracle: the verbosity bonus 0.05 / word beats a 0.1 score gap at +3 words, not at +1.
    config = TextTeacherConfig(name="v", verbosity=0.05)
    teacher = TextTeacher(config, np.random.default_rng(0))
    better = text_segment("p", filler(5), 0.1)
    for extra, expected in ((3, 1.0), (1, 0.0)):
        longer = text_segment("p", filler(5 + extra), 0.0)
        assert teacher.label([(better, longer)])[0].label == expected

    # Noisy (beta = 2) at equal true score, 5 more words: P(longer) = sigmoid(2 * 0.1 * 5).
    n = 3000
    config = TextTeacherConfig(name="v", bpref=TeacherConfig(beta=2.0), verbosity=0.1)
    teacher = TextTeacher(config, np.random.default_rng(1), scorer=zero_score)
    longer_first = np.random.default_rng(2).random(n) < 0.5
    short, long = filler(4), filler(9)
    firsts = [long if f else short for f in longer_first]
    seconds = [short if f else long for f in longer_first]
    labels = np.array([c.label for c in teacher.label_texts(["p"] * n, firsts, seconds)])
    chose_longer = np.where(longer_first, labels == 0.0, labels == 1.0)
    expected = 1.0 / (1.0 + math.exp(-1.0))
    assert abs(chose_longer.mean() - expected) < binomial_tolerance(expected, n)


def test_position_bias_frequency():
    n, p = 4000, 0.3
    teacher = TextTeacher(TextTeacherConfig(name="pos", position_bias=p), np.random.default_rng(5))
    pairs = [(text_segment("p", "meh", 0.0), text_segment("p", "great", 1.0))] * n
    labels = np.array([c.label for c in teacher.label(pairs)])
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert abs((labels == 0.0).mean() - p) < binomial_tolerance(p, n)
    preset = make_text_teacher("position", None, np.random.default_rng(0))
    assert preset.config.position_bias == pytest.approx(0.2)


def test_population_annotators_disagree_and_are_named():
    teacher = make_text_teacher("population", VaderSentiment(), np.random.default_rng(7))
    n = 400
    positive_short = "Good."
    neutral_long = "We watched this movie on a sunday and then we walked home and it was a day."
    comparisons = teacher.label_texts(["The movie"] * n, [positive_short] * n, [neutral_long] * n)
    by_annotator: dict[str, set[float]] = {}
    for comparison in comparisons:
        by_annotator.setdefault(comparison.teacher, set()).add(comparison.label)
    assert set(by_annotator) == {f"population/{a.name}" for a in POPULATION}
    # Each (rational) annotator is self-consistent; the faithful and the wordy one disagree.
    assert all(len(labels) == 1 for labels in by_annotator.values())
    assert by_annotator["population/faithful"] == {0.0}
    assert by_annotator["population/wordy"] == {1.0}
    counts = np.array([sum(c.teacher == name for c in comparisons) for name in by_annotator])
    assert counts.min() > n / len(POPULATION) / 2  # uniform draw


def test_text_presets_merge_through_the_core_merge(monkeypatch):
    # The nested B-Pref parameters merge field by field, names follow the spec at every level.
    config = make_text_teacher("mistake+noisy+position", None, np.random.default_rng(0)).config
    assert (config.bpref.eps_mistake, config.bpref.beta, config.position_bias) == (0.1, 10.0, 0.2)
    assert config.name == config.bpref.name == "mistake+noisy+position"
    monkeypatch.setitem(TEXT_PRESETS, "noisier", TextTeacherConfig(bpref=TeacherConfig(beta=3.0)))
    monkeypatch.setitem(TEXT_PRESETS, "wordier", TextTeacherConfig(verbosity=0.5))
    with pytest.raises(ValueError, match="text teacher 'noisy\\+noisier' sets beta twice"):
        make_text_teacher("noisy+noisier", None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sets verbosity twice"):
        make_text_teacher("verbose+wordier", None, np.random.default_rng(0))


def test_presets_compose_and_validate():
    rng = np.random.default_rng(0)
    teacher = make_text_teacher("noisy+verbose+population", VaderSentiment(), rng)
    assert teacher.name == "noisy+verbose+population"
    assert teacher.config.bpref.beta == 10.0 and teacher.config.verbosity == 0.05
    assert len(teacher.config.annotators) == len(POPULATION)
    with pytest.raises(ValueError, match="unknown text teacher 'chatty'"):
        make_text_teacher("chatty", None, rng)
    with pytest.raises(ValueError, match="position_bias must be in"):
        TextTeacherConfig(position_bias=1.0)
    with pytest.raises(ValueError, match="not given"):
        TextTeacher(
            TextTeacherConfig(annotators=(Annotator("a", {"humour": 1.0}),)), rng, scorer=None
        )
    with pytest.raises(ValueError, match="no true scorer"):
        make_text_teacher("oracle", None, rng).label_texts(["p"], ["a"], ["b"])


def test_skip_and_missing_text_are_handled():
    rng = np.random.default_rng(0)
    skip = make_text_teacher("skip", None, rng)
    pairs = [(text_segment("p", "a", -1.0), text_segment("p", "b", -0.5))] + [
        (text_segment("p", "c", 1.0), text_segment("p", "d", 2.0))
    ] * 3
    labels = [c.label for c in skip.label(pairs)]
    assert labels[0] is None and labels[1:] == [1.0, 1.0, 1.0]
    numeric = Segment(np.zeros((2, 1)), np.zeros((1, 1)), np.ones(1))
    verbose = make_text_teacher("verbose", None, rng)
    with pytest.raises(ValueError, match="text_segment"):
        verbose.label([(numeric, numeric)])


def test_labels_are_reproducible_from_the_seed(sentiment_pairs):
    prompts, first, second = sentiment_pairs

    def run(seed: int) -> list[tuple[float | None, str]]:
        teacher = make_text_teacher(
            "noisy+population+position", VaderSentiment(), np.random.default_rng(seed)
        )
        return [(c.label, c.teacher) for c in teacher.label_texts(prompts, first, second)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_round_trip_through_store_and_jsonl(tmp_path, sentiment_pairs):
    prompts, first, second = sentiment_pairs
    teacher = make_text_teacher("population", VaderSentiment(), np.random.default_rng(3))
    comparisons = teacher.label_texts(prompts[:40], first[:40], second[:40])
    with ComparisonStore(tmp_path / "c.sqlite") as store:
        store.append(comparisons)
        loaded = store.load()
    assert [(c.label, c.teacher) for c in loaded] == [(c.label, c.teacher) for c in comparisons]
    assert [dict(c.segment1.context) for c in loaded] == [
        dict(c.segment1.context) for c in comparisons
    ]

    written = export_jsonl(loaded, tmp_path / "prefs.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert written == len(lines) == sum(c.label is not None for c in comparisons)
    scorer = VaderSentiment()
    for line, comparison in zip(lines, comparisons, strict=True):
        assert line["prompt"] == comparison.segment0.context["prompt"]
        assert line["teacher"] == comparison.teacher
        if not line["tie"]:
            assert {line["chosen"], line["rejected"]} == {
                comparison.segment0.context["completion"],
                comparison.segment1.context["completion"],
            }
        if comparison.teacher.endswith("/faithful") and not line["tie"]:
            assert scorer("", line["chosen"]) > scorer("", line["rejected"])
    back = import_jsonl(tmp_path / "prefs.jsonl")
    assert [(c.label, c.teacher) for c in back] == [(c.label, c.teacher) for c in comparisons]
    assert [c.segment0.context["completion"] for c in back] == first[:40]


def test_text_teachers_take_dotted_parameters_of_nested_fields() -> None:
    from envs.text.feedback import TEXT_PRESETS
    from prefenv.teachers import merge_presets

    config = merge_presets("verbose(verbosity=0.5)+oracle(bpref.eps_mistake=0.2)", TEXT_PRESETS)
    assert (config.verbosity, config.bpref.eps_mistake) == (0.5, 0.2)
    with pytest.raises(ValueError, match="unknown parameter 'annotators'"):
        merge_presets("population(annotators=2)", TEXT_PRESETS)
