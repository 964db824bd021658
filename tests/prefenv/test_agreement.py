"""Agreement statistics against hand-computed values and the PyPI ``krippendorff`` package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefenv.agreement import (
    agreement_summary,
    annotator_summary,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_nominal,
)

# Fleiss (1971) as on Wikipedia: 10 items, 14 raters each, 5 categories.
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 4 observers,
# 12 units; the last unit has a single label and is not pairable.
KRIPPENDORFF_UNITS = [
    [1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
    [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3],
]  # fmt: skip


def test_cohen_kappa_by_hand() -> None:
    # 2x2 table over 10 items:    b=L  b=R
    #                       a=L    4    2     (a: 6 L, 4 R)
    #                       a=R    1    3     (b: 5 L, 5 R)
    # p_o = (4 + 3) / 10 = 0.7;  p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5;  kappa = 0.2 / 0.5 = 0.4
    a = ["L"] * 6 + ["R"] * 4
    b = ["L"] * 4 + ["R"] * 2 + ["L"] + ["R"] * 3
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    # always opposite on two categories used half-half: p_o = 0, p_e = 0.5 -> kappa = -1
    assert cohen_kappa(["L", "R"], ["R", "L"]) == pytest.approx(-1.0)


def test_cohen_kappa_edge_cases() -> None:
    assert math.isnan(cohen_kappa(["left"] * 5, ["left"] * 5))  # p_e = 1
    with pytest.raises(ValueError, match="same order"):
        cohen_kappa(["L", "R"], ["L"])
    with pytest.raises(ValueError, match="no items"):
        cohen_kappa([], [])


def test_fleiss_kappa_wikipedia_example() -> None:
    # column totals 20, 28, 39, 21, 32 of 140: P_e = (400+784+1521+441+1024) / 140^2 = 0.212755
    # sum_j n_ij^2 - 14 per row: 182, 46, 56, 80, 60, 84, 44, 32, 52, 52 (sum 688), each / 182:
    # P_bar = 688 / 1820 = 0.378022;  kappa = (0.378022 - 0.212755) / 0.787245 = 0.20993
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=1e-5)
    as_maps = [{c: int(n) for c, n in zip("abcde", row, strict=True) if n} for row in FLEISS_TABLE]
    assert fleiss_kappa(as_maps) == pytest.approx(fleiss_kappa(FLEISS_TABLE))


def test_fleiss_kappa_edge_cases() -> None:
    assert fleiss_kappa(np.array([[3, 0], [0, 3]])) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([{"left": 3}, {"left": 3}]))  # one category: P_e = 1
    with pytest.raises(ValueError, match="krippendorff_alpha_nominal"):
        fleiss_kappa(np.array([[2, 1], [1, 1]]))  # 3 raters, then 2
    with pytest.raises(ValueError, match="raters"):
        fleiss_kappa(np.array([[1, 0]]))  # one rater
    with pytest.raises(ValueError, match="non-negative integer"):
        fleiss_kappa(np.array([[1.5, 0.5]]))


def test_krippendorff_alpha_by_hand() -> None:
    # pairable values n = 40;  n_c for categories 1..5: 9, 13, 10, 5, 3
    # observed sum_{c!=k} o_ck = sum_u (m_u^2 - sum_c n_uc^2) / (m_u - 1):
    #   unit [2,2,3,2]: (16 - 9 - 1) / 3 = 2;  [1,2,3,4]: (16 - 4) / 3 = 4;  [1,1,2,1]: 2 -> 8
    # sum_{c!=k} n_c n_k = 40^2 - (81 + 169 + 100 + 25 + 9) = 1216
    # alpha = 1 - 39 * 8 / 1216 = 0.743421 (Krippendorff reports 0.743)
    assert krippendorff_alpha_nominal(KRIPPENDORFF_UNITS) == pytest.approx(1 - 39 * 8 / 1216)


def test_krippendorff_alpha_edge_cases() -> None:
    assert krippendorff_alpha_nominal([["L", "L"], ["R", "R", "R"], ["E"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["L", "L"], ["L", "L", "L"]]))
    with pytest.raises(ValueError, match="labelled twice"):
        krippendorff_alpha_nominal([["L"], ["R"], []])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_krippendorff_alpha_matches_package(seed: int) -> None:
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3, size=(5, 30)).astype(float)  # [raters, units]
    data[rng.random(data.shape) < 0.4] = np.nan
    # nudge toward agreement so alpha is not just noise around 0
    data[:, :10] = np.where(np.isnan(data[:, :10]), np.nan, data[0, :10])
    units = [[str(v) for v in column if not np.isnan(v)] for column in data.T]
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha_nominal(units) == pytest.approx(expected, abs=1e-10)


def test_summary_two_annotators() -> None:
    # q1..q4 labelled by both; q5 only by ann (a skip from bob does not make it overlap)
    labels = [
        ("q1", "ann", "left"), ("q1", "bob", "left"),
        ("q2", "ann", "right"), ("q2", "bob", "right"),
        ("q3", "ann", "left"), ("q3", "bob", "right"),
        ("q4", "ann", "equal"), ("q4", "bob", "equal"),
        ("q5", "ann", "left"), ("q5", "bob", "skip"),
    ]  # fmt: skip
    summary = agreement_summary(labels)
    assert summary["items_with_overlap"] == 4
    assert summary["pairwise_agreement"] == pytest.approx(3 / 4)
    # ann L,R,L,E / bob L,R,R,E: p_o = 3/4, p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16
    assert summary["cohen_kappa"] == pytest.approx((3 / 4 - 5 / 16) / (1 - 5 / 16))
    assert summary["fleiss_kappa"] is None
    assert summary["krippendorff_alpha"] is not None
    assert "fleiss_kappa needs >= 3 raters" in summary["note"]


def test_summary_three_annotators_same_raters() -> None:
    # q1: L L L, q2: R R L, q3: E E E  -> Fleiss counts (L, R, E): [3,0,0], [1,2,0], [0,0,3]
    # P_i = 1, 1/3, 1 -> P_bar = 7/9;  totals 4, 2, 3 of 9 -> P_e = (16 + 4 + 9) / 81 = 29/81
    labels = [(q, a, c) for q, choices in (("q1", "LLL"), ("q2", "RRL"), ("q3", "EEE"))
              for a, c in zip(("x", "y", "z"), choices, strict=True)]  # fmt: skip
    summary = agreement_summary(labels)
    assert summary["fleiss_kappa"] == pytest.approx((7 / 9 - 29 / 81) / (1 - 29 / 81))
    assert summary["pairwise_agreement"] == pytest.approx(7 / 9)  # (3 + 1 + 3) / 9 pairs
    assert summary["cohen_kappa"] is None
    assert "exactly two annotators" in summary["note"]


def test_summary_unequal_raters_and_no_overlap() -> None:
    labels = [("q1", "x", "L"), ("q1", "y", "L"), ("q2", "x", "L"), ("q2", "y", "R"),
              ("q2", "z", "R")]  # fmt: skip
    summary = agreement_summary(labels)
    assert summary["fleiss_kappa"] is None and summary["cohen_kappa"] is None
    assert "got 2 to 3" in summary["note"]
    assert summary["krippendorff_alpha"] == pytest.approx(
        krippendorff_alpha_nominal([["L", "L"], ["L", "R", "R"]])
    )
    empty = agreement_summary([("q1", "x", "L"), ("q1", "y", "skip"), ("q2", "y", "R")])
    assert empty["items_with_overlap"] == 0 and empty["krippendorff_alpha"] is None
    assert "set overlap >= 2" in empty["note"]


def test_summary_all_one_choice_is_none_not_nan() -> None:
    summary = agreement_summary([(q, a, "left") for q in ("q1", "q2") for a in ("x", "y")])
    assert summary["pairwise_agreement"] == 1.0
    assert summary["cohen_kappa"] is None and summary["krippendorff_alpha"] is None
    assert "undefined" in summary["note"]
    with pytest.raises(ValueError, match="twice"):
        agreement_summary([("q1", "x", "left"), ("q1", "x", "right")])


def test_annotator_summary() -> None:
    def row(who: str, choice: str, seconds: float | None, gold: float | None = None) -> dict:
        return {"annotator": who, "choice": choice, "response_seconds": seconds, "gold": gold}

    rows = [
        row("ann", "left", 2.0), row("ann", "right", 4.0, gold=1.0),  # gold right: correct
        row("ann", "equal", 9.0, gold=0.0),  # equal on gold: answered, not correct
        row("ann", "skip", 1.0, gold=0.0),  # skip on gold: answered, not correct
        row("bob", "left", None, gold=0.0), row("bob", "skip", 3.0),
    ]  # fmt: skip
    stats = annotator_summary(rows)
    assert list(stats) == ["ann", "bob"]
    ann, bob = stats["ann"], stats["bob"]
    assert (ann["labels"], ann["skips"]) == (3, 1)
    assert ann["median_seconds"] == 4.0 and ann["mean_seconds"] == pytest.approx(5.0)  # 2, 4, 9
    assert (ann["gold_answered"], ann["gold_correct"]) == (3, 1)
    assert ann["gold_accuracy"] == pytest.approx(1 / 3)
    assert (bob["labels"], bob["skips"], bob["median_seconds"]) == (1, 1, None)
    assert bob["gold_accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown choice"):
        annotator_summary([row("x", "up", 1.0)])
    with pytest.raises(ValueError, match="gold must be"):
        annotator_summary([row("x", "left", 1.0, gold=0.5)])
