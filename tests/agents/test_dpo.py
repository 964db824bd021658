"""DPO: the loss against hand-computed values, sequence log-probs, training, pairs, iterative DPO."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.text.dpo import (
    DPOConfig,
    dpo_loss,
    pair_logps,
    sequence_logps,
    train_dpo,
)
from agents.text.iterative_dpo import iterative_dpo
from agents.text.optim import DPO_OPTIM, LMOptimConfig
from agents.text.pairs import PreferencePair, collate_pairs, encode_pairs, pairs_from_comparisons
from envs.text.default_model import VocabMismatchError, default_tokenizer, tiny_gpt2_config
from prefenv.jsonl import import_jsonl

torch.set_num_threads(1)

GOOD = ("great", "good", "wonderful", "lovely", "excellent")
BAD = ("bad", "awful", "terrible", "boring", "dull")
PROMPTS = (
    "The plot was",
    "The soup",
    "We tried this restaurant",
    "The acting",
    "Overall, the book",
)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def tiny_lm(tokenizer, seed: int = 0, n_layer: int = 1, vocab_size: int | None = None):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = tiny_gpt2_config(vocab_size or len(tokenizer), n_layer=n_layer, n_embd=32, n_head=2)
    return GPT2LMHeadModel(config).eval()


def synthetic_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Chosen completions praise, rejected ones complain (same prompt, similar length)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        prompt = PROMPTS[rng.integers(len(PROMPTS))]
        good, bad = rng.choice(GOOD, 2, replace=False), rng.choice(BAD, 2, replace=False)
        pairs.append(
            PreferencePair(prompt, f" was {good[0]} and {good[1]}.", f" was {bad[0]} and {bad[1]}.")
        )
    return pairs


def test_dpo_loss_matches_hand_computed_values():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.5])
    # h = (pc - rc) - (pr - rr) = [0.5 - (-1.0), 0.0 - 0.5] = [1.5, -0.5]
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # -log sigmoid(0.15) = log(1 + e^-0.15); -log sigmoid(-0.05) = log(1 + e^0.05)
    assert losses.tolist() == pytest.approx([0.620957048, 0.718459648], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.05, 0.0], abs=1e-7)
    assert rejected.tolist() == pytest.approx([-0.1, 0.05], abs=1e-7)

    # beta 0.5, label smoothing 0.2: -0.8 log sigmoid(beta h) - 0.2 log sigmoid(-beta h)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    assert losses.tolist() == pytest.approx([0.536871006, 0.775939420], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.25, 0.0], abs=1e-7)
    assert rejected.tolist() == pytest.approx([-0.5, 0.25], abs=1e-7)


def test_dpo_loss_tie_is_symmetric_and_minimal_at_equal_rewards():
    zero = torch.zeros(3)
    h = torch.tensor([-2.0, 0.0, 2.0])
    losses, _, _ = dpo_loss(h, zero, zero, zero, beta=1.0, label_smoothing=torch.full((3,), 0.5))
    assert losses[0].item() == pytest.approx(losses[2].item(), abs=1e-6)
    assert losses[1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses[1] < losses[0]


def test_sequence_logps_equal_a_manual_per_token_sum(tokenizer):
    model = tiny_lm(tokenizer)
    pairs = [
        ("The plot was", " great.", " bad and long and boring."),
        ("We tried this restaurant", " good", " awful"),
        ("", " fine", " not fine at all"),
    ]
    encoded = encode_pairs(tokenizer, pairs, max_length=64)
    batch = collate_pairs(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
        chosen, rejected = pair_logps(model, batch)
    rows = [(p.prompt, p.chosen) for p in encoded] + [(p.prompt, p.rejected) for p in encoded]
    for row, (prompt, completion) in enumerate(rows):
        ids = torch.tensor([prompt + completion])  # unpadded, its own forward
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        expected = sum(
            logp[t - 1, ids[0, t]].item() for t in range(len(prompt), len(prompt) + len(completion))
        )
        assert got[row].item() == pytest.approx(expected, abs=1e-4)
    assert torch.equal(torch.cat([chosen, rejected]), got)
    assert encoded[0].prompt[0] == tokenizer.bos_token_id
    assert encoded[0].chosen[-1] == tokenizer.eos_token_id


def test_train_dpo_changes_every_parameter_and_keeps_the_reference(tokenizer):
    model = tiny_lm(tokenizer, n_layer=2)
    ref = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    metrics = train_dpo(
        model, ref, tokenizer, synthetic_pairs(16, 0),
        DPOConfig(optim=LMOptimConfig(learning_rate=1e-3, batch_size=8, max_steps=3)),
    )  # fmt: skip
    assert metrics.steps == 3 and all(math.isfinite(x) for x in metrics.losses)
    assert metrics.first_loss == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert all(torch.equal(p, before[n]) for n, p in ref.named_parameters())


def test_precomputed_and_per_batch_reference_give_the_same_training(tokenizer):
    pairs = synthetic_pairs(12, 1)
    runs = []
    for precompute in (True, False):
        model = tiny_lm(tokenizer)
        config = DPOConfig(
            precompute_ref=precompute,
            optim=LMOptimConfig(learning_rate=1e-3, batch_size=4, max_steps=3),
        )
        runs.append(train_dpo(model, None, tokenizer, pairs, config).losses)
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def _held_out_margin(model, ref, tokenizer, pairs) -> tuple[float, float]:
    """Mean (policy - ref) chosen-minus-rejected log-ratio and the fraction of pairs above 0."""
    batch = collate_pairs(encode_pairs(tokenizer, pairs, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        pc, pr = pair_logps(model, batch)
        rc, rr = pair_logps(ref, batch)
    margin = (pc - rc) - (pr - rr)
    return margin.mean().item(), (margin > 0).float().mean().item()


def test_dpo_raises_the_preference_margin_on_held_out_pairs(tokenizer):
    model = tiny_lm(tokenizer, seed=3)
    ref = copy.deepcopy(model)
    held_out = synthetic_pairs(32, seed=100)
    assert _held_out_margin(model, ref, tokenizer, held_out)[0] == pytest.approx(0.0, abs=1e-5)
    metrics = train_dpo(
        model, ref, tokenizer, synthetic_pairs(64, seed=0),
        DPOConfig(beta=0.1, optim=LMOptimConfig(learning_rate=2e-3, batch_size=16, epochs=4)),
    )  # fmt: skip
    margin, accuracy = _held_out_margin(model, ref, tokenizer, held_out)
    assert margin > 2.0, f"held-out log-ratio margin only {margin:.3f}"
    assert accuracy > 0.9
    assert metrics.final_loss < metrics.first_loss - 0.1
    assert np.mean(metrics.accuracies[-3:]) > 0.9


def test_pairs_from_jsonl_rows_skip_or_keep_ties(tokenizer, tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "The plot was", "chosen": " great.", "rejected": " bad."},
        {"prompt": "The soup", "chosen": " good", "rejected": " dull", "chosen_position": 1},
        {"prompt": "The cast", "chosen": " fine", "rejected": " okay", "tie": True},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    comparisons = import_jsonl(path)
    pairs = pairs_from_comparisons(comparisons)
    assert pairs == [
        PreferencePair("The plot was", " great.", " bad."),
        PreferencePair("The soup", " good", " dull"),
    ]
    with_ties = pairs_from_comparisons(comparisons, ties="keep")
    assert with_ties[-1] == PreferencePair("The cast", " fine", " okay", tie=True)
    batch = collate_pairs(encode_pairs(tokenizer, with_ties, 32), 0, label_smoothing=0.1)
    assert batch.label_smoothing.tolist() == pytest.approx([0.1, 0.1, 0.5])
    metrics = train_dpo(
        tiny_lm(tokenizer),
        None,
        tokenizer,
        with_ties,
        DPOConfig(optim=replace(DPO_OPTIM, max_steps=1)),
    )
    assert math.isfinite(metrics.first_loss)


def test_iterative_dpo_runs_rounds_and_grows_its_pairs(tokenizer):
    model = tiny_lm(tokenizer)
    calls = []

    def label_fn(prompt: str, a: str, b: str) -> float:  # a teacher that prefers longer text
        calls.append((prompt, a, b))
        return 0.5 if len(a) == len(b) else float(len(b) > len(a))

    prompts = list(PROMPTS[:3])
    result = iterative_dpo(
        model, None, tokenizer, prompts, label_fn, rounds=2,
        config=DPOConfig(optim=LMOptimConfig(learning_rate=1e-3, batch_size=4, max_steps=2)),
        max_new_tokens=6, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert len(calls) == 6 and result.pairs_per_round == [3, 3]
    assert len(result.pairs) == 6 and len(result.rounds) == 2
    assert [r.n_pairs for r in result.rounds] == [3, 6]
    assert all(math.isfinite(x) for r in result.rounds for x in r.losses)
    assert {p.prompt for p in result.pairs} == set(prompts)


def test_clear_errors(tokenizer):
    small = tiny_lm(tokenizer, vocab_size=64)
    with pytest.raises(VocabMismatchError, match="embedding"):
        train_dpo(small, None, tokenizer, synthetic_pairs(2, 0))
    model = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(model, None, tokenizer, [])
    with pytest.raises(ValueError, match="max_length=8"):
        train_dpo(
            model,
            None,
            tokenizer,
            synthetic_pairs(2, 0),
            DPOConfig(optim=replace(DPO_OPTIM, max_length=8)),
        )
    with pytest.raises(ValueError, match="prompt, chosen, rejected"):
        train_dpo(model, None, tokenizer, [("only a prompt", " and one completion")])
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_fn must return"):
        iterative_dpo(
            model, None, tokenizer, ["The plot"], lambda p, a, b: 0.3, rounds=1, max_new_tokens=2
        )
