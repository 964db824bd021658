"""The DPO family: each loss against hand-computed values, the ensemble rule, and training.

Every pure loss of :mod:`agents.text.dpo_losses` is checked on numbers worked out by hand in the
comments; then each loss trains a tiny GPT-2 through :func:`agents.text.dpo.train_dpo` (every
parameter changes; the held-out preference margin grows), KTO's data (KL partners, unpaired
examples) and uncertainty-aware DPO's relabelling and weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.text.dpo import DPOConfig, pair_logps, train_dpo
from agents.text.dpo_losses import (
    LOSSES,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    robust_dpo_loss,
    simpo_loss,
    uncertainty_weights,
)
from agents.text.dpo_steps import STEPS
from agents.text.optim import LMOptimConfig
from agents.text.pairs import PreferencePair, collate_pairs, encode_pairs, reweight_pairs
from agents.text.unpaired import collate_examples, encode_examples, kl_partners, unpaired_examples
from envs.text.default_model import default_tokenizer, tiny_gpt2_config
from prefenv.unpaired import UnpairedExample

torch.set_num_threads(1)
t = torch.tensor

GOOD = ("great", "good", "wonderful", "lovely", "excellent")
BAD = ("bad", "awful", "terrible", "boring", "dull")
PROMPTS = ("The plot was", "The soup", "We tried this restaurant", "The acting", "Overall")


# ----------------------------------------------------------------------------- pure losses


def test_ipo_matches_hand_computed_values():
    pc, pr, rc, rr = t([-4.0, -6.0]), t([-6.0, -3.0]), t([-5.0, -6.0]), t([-5.0, -4.0])
    n_c, n_r = t([2.0, 4.0]), t([4.0, 2.0])
    # log-ratios: chosen [1, 0], rejected [-1, 1]; per token: h = [1/2 + 1/4, 0/4 - 1/2]
    # = [0.75, -0.5]; beta 0.5: target 1 / (2 * 0.5) = 1; (h - 1)^2 = [0.0625, 2.25]
    losses, chosen, rejected = ipo_loss(pc, pr, rc, rr, n_c, n_r, beta=0.5)
    assert losses.tolist() == pytest.approx([0.0625, 2.25])
    assert chosen.tolist() == pytest.approx([0.5, 0.0])  # beta * summed log-ratio
    assert rejected.tolist() == pytest.approx([-0.5, 0.5])
    # eps 0.25: 0.75 (h - 1)^2 + 0.25 (h + 1)^2 = [0.046875 + 0.765625, 1.6875 + 0.0625]
    losses, _, _ = ipo_loss(pc, pr, rc, rr, n_c, n_r, beta=0.5, label_smoothing=0.25)
    assert losses.tolist() == pytest.approx([0.8125, 1.75])
    # a tie (eps 0.5): h^2 + 1 = [1.5625, 1.25], smallest at h = 0
    losses, _, _ = ipo_loss(pc, pr, rc, rr, n_c, n_r, beta=0.5, label_smoothing=t([0.5, 0.5]))
    assert losses.tolist() == pytest.approx([1.5625, 1.25])


def test_simpo_matches_hand_computed_values_and_reads_no_reference():
    pc, pr, n_c, n_r = t([-4.0, -9.0]), t([-12.0, -4.0]), t([2.0, 3.0]), t([4.0, 2.0])
    # averages: chosen [-2, -3], rejected [-3, -2]; beta 2: rewards [-4, -6] and [-6, -4];
    # gamma = 2 * 0.5 = 1; x = (rewards_c - rewards_r) - 1 = [1, -3];
    # -log sigmoid(x) = log(1 + e^-x) = [log 1.36787944, log 21.0855369]
    losses, chosen, rejected = simpo_loss(pc, pr, n_c, n_r)
    assert losses.tolist() == pytest.approx([0.31326169, 3.04858735], abs=1e-6)
    assert chosen.tolist() == pytest.approx([-4.0, -6.0])
    assert rejected.tolist() == pytest.approx([-6.0, -4.0])
    # a tie: 0.5 log(1 + e^-(d - 1)) + 0.5 log(1 + e^(d + 1)) at d = +-2: both
    # (0.31326169 + 3.04858735) / 2 = 1.68092452 (symmetric in d)
    losses, _, _ = simpo_loss(pc, pr, n_c, n_r, label_smoothing=0.5)
    assert losses.tolist() == pytest.approx([1.68092452, 1.68092452], abs=1e-6)


def test_robust_dpo_matches_hand_computed_values_and_is_unbiased_under_flips():
    pc, pr, rc, rr = t([-1.0, -2.0]), t([-2.0, -1.0]), t([-1.0, -1.0]), t([-1.0, -1.0])
    # h = [0 - (-1), -1 - 0] = [1, -1]; beta 1; l(h) = log(1 + e^-h): l(1) = 0.31326169,
    # l(-1) = 1.31326169. e = 0.2: [(0.8 l(h) - 0.2 l(-h)) / 0.6]
    # = [(0.25060935 - 0.26265234) / 0.6, (1.05060935 - 0.06265234) / 0.6]
    losses, chosen, rejected = robust_dpo_loss(pc, pr, rc, rr, beta=1.0, flip_rate=0.2)
    assert losses.tolist() == pytest.approx([-0.02007165, 1.64659502], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.0, -1.0])
    assert rejected.tolist() == pytest.approx([-1.0, 0.0])
    # in expectation over a 20% flip the robust loss is the clean one: 0.8 L(1) + 0.2 L(-1)
    # = -0.01605732 + 0.32931900 = 0.31326169 = l(1)
    assert 0.8 * losses[0] + 0.2 * losses[1] == pytest.approx(0.31326169, abs=1e-6)
    with pytest.raises(ValueError, match="flip_rate"):
        robust_dpo_loss(pc, pr, rc, rr, flip_rate=0.5)


def test_kto_matches_hand_computed_values():
    policy, ref = t([-2.0, -3.0, -1.0]), t([-3.0, -3.0, -2.0])  # r = [1, 0, 1]
    desirable = t([True, False, False])
    # z0 0.5, beta 1, lambda_U 2: desirable 1 - sigmoid(1 - 0.5) = 1 - 0.62245933 = 0.37754067;
    # undesirable 2 (1 - sigmoid(0.5 - 0)) = 0.75508134 and 2 (1 - sigmoid(0.5 - 1)) = 1.24491866
    losses, rewards = kto_loss(policy, ref, desirable, 0.5, beta=1.0, undesirable_weight=2.0)
    assert losses.tolist() == pytest.approx([0.37754067, 0.75508134, 1.24491866], abs=1e-6)
    assert rewards.tolist() == pytest.approx([1.0, 0.0, 1.0])
    # z0 = max(0, mean((-2 + 3), (-4 + 4))) = 0.5; a negative mean (-1) clamps to 0
    kl_policy = t([-2.0, -4.0], requires_grad=True)
    z0 = kto_kl_estimate(kl_policy, t([-3.0, -4.0]))
    assert z0.item() == pytest.approx(0.5) and not z0.requires_grad
    assert kto_kl_estimate(t([-5.0, -4.0]), t([-3.0, -4.0])).item() == 0.0


def test_uncertainty_weights_follow_the_rule():
    margins = np.array([[1.0, -1.0, 0.0], [3.0, -2.0, 0.0]])
    # mu = [2, -1.5, 0], sigma = [1, 0.5, 0]; flip where mu < -2 sigma: only pair 1 (-1.5 < -1)
    # s = mean sigma = 0.5; raw 1 / (1 + (sigma / s)^2) = [1/5, 1/2, 1], mean 17/30, so
    # weights = raw * 30 / 17 = [6/17, 15/17, 30/17]
    weights, flip = uncertainty_weights(margins)
    assert flip.tolist() == [False, True, False]
    assert weights.tolist() == pytest.approx([6 / 17, 15 / 17, 30 / 17])
    assert uncertainty_weights(margins, flip_z=4.0)[1].tolist() == [False, False, False]
    assert uncertainty_weights(np.zeros((3, 4)))[0].tolist() == [1.0] * 4  # no disagreement
    with pytest.raises(ValueError, match="K >= 2"):
        uncertainty_weights(np.ones((1, 3)))


def test_reweight_pairs_swaps_contradicted_pairs_but_never_ties():
    pairs = [PreferencePair("p", "a", "b"), PreferencePair("q", "c", "d"),
             PreferencePair("r", "e", "f", tie=True)]  # fmt: skip
    margins = np.array([[1.0, -1.0, -1.0], [3.0, -2.0, -2.0]])
    new, flipped = reweight_pairs(pairs, margins)
    assert flipped.tolist() == [False, True, False]
    assert [(p.chosen, p.rejected) for p in new] == [("a", "b"), ("d", "c"), ("e", "f")]
    assert np.mean([p.weight for p in new]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one column per pair"):
        reweight_pairs(pairs, margins[:, :2])


# ----------------------------------------------------------------------------- KTO's data


def test_kl_partners_rotate_within_chunks_and_avoid_the_own_prompt():
    assert kl_partners(list("abcd"), 4) == [3, 0, 1, 2]  # TRL: [y_n, y_1, ..., y_(n-1)]
    assert kl_partners(list("aabb"), 4) == [2, 3, 0, 1]  # pairs laid out c, r, c, r: shift 2
    assert kl_partners(list("abcde"), 2) == [1, 0, 4, 2, 3]  # a last chunk of 1 joins in


def test_unpaired_examples_from_pairs_files_and_tuples(tokenizer):
    data = [PreferencePair("p", " a", " b", weight=2.0), PreferencePair("q", " c", " d", True),
            UnpairedExample("r", " e", False), ("s", " f", True)]  # fmt: skip
    examples = unpaired_examples(data)
    assert [(e.completion, e.label, w) for e, w in examples] == [
        (" a", True, 2.0),
        (" b", False, 2.0),
        (" e", False, 1.0),
        (" f", True, 1.0),
    ]  # the tie gives no example
    encoded = encode_examples(tokenizer, data, 32, True, batch_size=4)
    batch = collate_examples(encoded, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 8 and batch.desirable.tolist() == [True, False, False, True]
    assert batch.weight.tolist() == [2.0, 2.0, 1.0, 1.0]
    # example 0's KL row is its prompt with another example's completion
    assert encoded[0].kl_completion == encoded[kl_partners(["p", "p", "r", "s"], 4)[0]].completion
    with pytest.raises(ValueError, match="at least 2 unpaired examples"):
        encode_examples(tokenizer, [("p", " a", True)], 32, True, batch_size=4)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def tiny_lm(tokenizer, seed: int = 0, n_layer: int = 1):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = tiny_gpt2_config(len(tokenizer), n_layer=n_layer, n_embd=32, n_head=2)
    return GPT2LMHeadModel(config).eval()


def praise_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Chosen completions praise, rejected ones complain (same prompt, similar length)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        good, bad = rng.choice(GOOD, 2, replace=False), rng.choice(BAD, 2, replace=False)
        pairs.append(PreferencePair(PROMPTS[rng.integers(len(PROMPTS))],
                                    f" was {good[0]} and {good[1]}.", f" was {bad[0]} and {bad[1]}."))  # fmt: skip
    return pairs


def test_every_loss_has_a_training_step():
    assert set(STEPS) == set(LOSSES)
    with pytest.raises(ValueError, match="choose one of sigmoid, ipo"):
        DPOConfig(loss="orpo")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        DPOConfig(loss="kto", optim=LMOptimConfig(learning_rate=1e-3, batch_size=1))


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_changes_every_parameter(tokenizer, loss):
    model = tiny_lm(tokenizer, n_layer=2)
    ref = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = DPOConfig(loss=loss, label_smoothing=0.1,
                       optim=LMOptimConfig(learning_rate=1e-3, batch_size=8, max_steps=3))  # fmt: skip
    metrics = train_dpo(model, ref, tokenizer, praise_pairs(16, 0), config)
    assert metrics.steps == 3 and all(math.isfinite(x) for x in metrics.losses)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"{loss}: parameters not updated: {unchanged}"
    assert all(torch.equal(p, before[n]) for n, p in ref.named_parameters())
    assert len(metrics.kl) == (3 if loss == "kto" else 0)


def _held_out_margin(model, ref, tokenizer, pairs) -> float:
    """Mean (policy - ref) chosen-minus-rejected log-ratio on held-out pairs."""
    batch = collate_pairs(encode_pairs(tokenizer, pairs, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        pc, pr = pair_logps(model, batch)
        rc, rr = pair_logps(ref, batch)
    return ((pc - rc) - (pr - rr)).mean().item()


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_learns_the_preference(tokenizer, loss):
    model = tiny_lm(tokenizer, seed=3)
    ref = copy.deepcopy(model)
    config = DPOConfig(loss=loss, optim=LMOptimConfig(learning_rate=2e-3, batch_size=16, epochs=3))
    metrics = train_dpo(model, ref, tokenizer, praise_pairs(48, seed=0), config)
    margin = _held_out_margin(model, ref, tokenizer, praise_pairs(32, seed=100))
    assert margin > 1.0, f"{loss}: held-out log-ratio margin only {margin:.3f}"
    assert metrics.final_loss < metrics.first_loss
    assert np.mean(metrics.accuracies[-2:]) > 0.8


def test_simpo_skips_the_reference_pass(tokenizer):
    class Untouchable(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("SimPO ran the reference model")

    config = DPOConfig(loss="simpo", optim=LMOptimConfig(learning_rate=1e-3, batch_size=4,
                                                         max_steps=2))  # fmt: skip
    metrics = train_dpo(tiny_lm(tokenizer), Untouchable(), tokenizer, praise_pairs(8, 0), config)
    assert metrics.ref_seconds == 0.0 and metrics.steps == 2


def test_kto_trains_on_unpaired_examples_and_pair_weights_scale_the_loss(tokenizer):
    examples = [UnpairedExample(p.prompt, c, label)
                for p in praise_pairs(6, 1) for c, label in ((p.chosen, True), (p.rejected, False))]  # fmt: skip
    optim = LMOptimConfig(learning_rate=1e-3, batch_size=4, max_steps=2, shuffle=False)
    metrics = train_dpo(
        tiny_lm(tokenizer), None, tokenizer, examples, DPOConfig("kto", optim=optim)
    )
    assert metrics.n_pairs == 12 and metrics.first_loss == pytest.approx(0.5)  # 1 - sigmoid(0)
    # a weight of 2 on every pair doubles the first loss (policy = reference: log 2 per pair)
    heavy = [p._replace(weight=2.0) for p in praise_pairs(8, 0)]
    config = DPOConfig(optim=replace(optim, max_steps=1))
    assert train_dpo(tiny_lm(tokenizer), None, tokenizer, heavy, config).first_loss == (
        pytest.approx(2 * math.log(2), abs=1e-5)
    )


def test_clear_errors_for_the_wrong_data(tokenizer):
    model = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="loss='kto'"):
        train_dpo(model, None, tokenizer, [UnpairedExample("p", " a", True)] * 2)
    tie = [PreferencePair("p", " a", " b", tie=True), *praise_pairs(2, 0)]
    with pytest.raises(ValueError, match="no form for ties"):
        train_dpo(model, None, tokenizer, tie, DPOConfig(loss="robust"))
