"""GRPO / Dr. GRPO / RLOO: advantages and loss against hand-computed groups, training, learning."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.text.grpo import GRPO_OPTIM, GRPOConfig, _rollout, token_logps, train_grpo
from agents.text.grpo_losses import (
    ADV_EPS,
    group_advantages,
    grpo_loss,
    kl_penalised_rewards,
    rloo_advantages,
)
from agents.text.sampling import completion_logps, sample_completions
from envs.text.default_model import default_tokenizer, tiny_gpt2_config

torch.set_num_threads(1)

PROMPTS = (
    "The plot was",
    "The soup",
    "We tried this restaurant",
    "The acting",
    "Overall, the book",
)
REWARDS = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
LN2 = math.log(2.0)


def count_e(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward that prefers tokens spelt with an 'e': the number of e's in the completion."""
    return [float(c.count("e")) for c in completions]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def tiny_lm(tokenizer, seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = tiny_gpt2_config(len(tokenizer), n_layer=1, n_embd=32, n_head=2)
    return GPT2LMHeadModel(config).eval()


def config(steps: int, lr: float = 1e-2, **kwargs) -> GRPOConfig:
    optim = replace(GRPO_OPTIM, learning_rate=lr, batch_size=4, max_steps=steps, seed=0)
    return GRPOConfig(max_completion_length=8, optim=optim, **kwargs)


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_match_hand_computed_groups() -> None:
    # Group [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3]; unbiased variance
    # (4 + 1 + 0 + 9) / (4 - 1) = 14 / 3, std sqrt(14 / 3) = 2.1602. Group [5, 5, 5, 5]: all 0.
    std = math.sqrt(14 / 3)
    grpo = torch.tensor([[-2 / (std + ADV_EPS), -1 / (std + ADV_EPS), 0.0, 3 / (std + ADV_EPS)],
                         [0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    torch.testing.assert_close(group_advantages(REWARDS, "std"), grpo)
    # Dr. GRPO keeps the deviations unscaled.
    dr = torch.tensor([[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(REWARDS, "none"), dr)


def test_rloo_advantages_leave_one_out() -> None:
    # Group [1, 2, 3, 6], sum 12: baselines (12 - r_i) / 3 = [11/3, 10/3, 3, 2], so
    # advantages [1 - 11/3, 2 - 10/3, 3 - 3, 6 - 2] = [-8/3, -4/3, 0, 4] (= 4/3 x deviations).
    expected = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rloo_advantages(REWARDS), expected)


@pytest.mark.parametrize("advantages", [rloo_advantages, group_advantages])
def test_bad_groups_get_clear_errors(advantages) -> None:
    with pytest.raises(ValueError, match="G >= 2"):
        advantages(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="empty group"):
        advantages(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="NaN reward"):
        advantages(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="prompts, group"):
        advantages(torch.zeros(8))


# ----------------------------------------------------------------------------- loss

# Two sequences of two tokens; the second's second token is padding (mask 0).
OLD = torch.tensor([[-1.0, -2.0], [-1.0, -3.0]])
RATIO = torch.tensor([[1.5, 1.0], [1.5, 0.5]])
LOGPS = OLD + RATIO.log()
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])


def test_grpo_loss_matches_hand_computed_values() -> None:
    # Sequence 0 (A = +1): -min(1.5, clip 1.2) = -1.2 and -min(1, 1) = -1: mean -1.1.
    # Sequence 1 (A = -1): -min(-1.5, -1.2) = 1.5 (the pessimistic, unclipped side); the
    # padding token is ignored: mean 1.5. Per-sequence normalisation: (-1.1 + 1.5) / 2 = 0.2.
    out = grpo_loss(LOGPS, OLD, None, ADV, MASK, clip_eps=0.2, beta=0.0)
    assert out.loss.item() == pytest.approx(0.2, abs=1e-6)
    # Only sequence 0's first token was held by the clip: 1 of 3 completion tokens.
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    assert math.isnan(out.kl.item())
    # Dr. GRPO's constant: (-1.2 - 1 + 1.5) / (2 sequences x max_length 4) = -0.0875.
    dr = grpo_loss(LOGPS, OLD, None, ADV, MASK, 0.2, 0.0, "constant", max_length=4)
    assert dr.loss.item() == pytest.approx(-0.0875, abs=1e-6)


def test_k3_kl_term_in_the_loss() -> None:
    # ref - logp = ln 2 on every token: k3 = e^{ln 2} - ln 2 - 1 = 2 - 0.693147 - 1 = 0.306853;
    # beta 0.1 adds 0.0306853 to every token, so to each sequence's mean: 0.2 + 0.0306853.
    ref = LOGPS + LN2
    out = grpo_loss(LOGPS, OLD, ref, ADV, MASK, clip_eps=0.2, beta=0.1)
    assert out.kl.item() == pytest.approx(2 - LN2 - 1, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.2 + 0.1 * (2 - LN2 - 1), abs=1e-6)
    with pytest.raises(ValueError, match="needs ref_logps"):
        grpo_loss(LOGPS, OLD, None, ADV, MASK, beta=0.1)


def test_padding_tokens_do_not_reach_the_loss_or_its_gradient() -> None:
    logps = LOGPS.clone().requires_grad_(True)
    out = grpo_loss(logps, OLD, LOGPS + LN2, ADV, MASK, beta=0.1)
    out.loss.backward()
    assert logps.grad[1, 1] == 0 and bool((logps.grad[MASK.bool()] != 0).any())
    changed = LOGPS.clone()
    changed[1, 1] = 5.0  # a padding position
    assert grpo_loss(changed, OLD, LOGPS + LN2, ADV, MASK, beta=0.1).loss.item() == pytest.approx(
        out.loss.item(), abs=1e-7
    )


def test_kl_as_a_reward_penalty() -> None:
    # Summed log-ratio old - ref over completion tokens: sequence 0: (-1 + 2) + (-2 + 2) = 1;
    # sequence 1: (-1 + 1) = 0 (its padding token, -3 + 1, is masked). beta 0.5:
    # [1 - 0.5 * 1, 2 - 0.5 * 0] = [0.5, 2].
    ref = torch.tensor([[-2.0, -2.0], [-1.0, -1.0]])
    got = kl_penalised_rewards(torch.tensor([1.0, 2.0]), OLD, ref, MASK, beta=0.5)
    torch.testing.assert_close(got, torch.tensor([0.5, 2.0]))


def test_the_config_puts_the_kl_in_one_place_and_validates() -> None:
    assert GRPOConfig(beta=0.1).kl_coefs == (0.0, 0.1)
    assert GRPOConfig(beta=0.1, kl_in_reward=True).kl_coefs == (0.1, 0.0)
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="unknown algo"):
        GRPOConfig(algo="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        GRPOConfig(beta=-1.0)


# ----------------------------------------------------------------------------- model


def test_token_logps_sum_to_the_samplers_sequence_logps(tokenizer) -> None:
    model = tiny_lm(tokenizer)
    samples = sample_completions(model, tokenizer, list(PROMPTS), max_new_tokens=6, seed=3)
    with torch.no_grad():
        per_token = token_logps(model, samples)
    assert per_token.shape == samples.completion_ids.shape
    assert bool((per_token[samples.completion_mask == 0] == 0).all())
    np.testing.assert_allclose(per_token.sum(1).numpy(), completion_logps(model, samples),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_reward_penalty_enters_the_advantages(tokenizer) -> None:
    model, ref = tiny_lm(tokenizer, seed=0), tiny_lm(tokenizer, seed=1)
    cfg = config(1, algo="rloo", beta=0.5, kl_in_reward=True)
    batch = _rollout(model, ref, tokenizer, list(PROMPTS[:2]), count_e, cfg, seed=0)
    assert batch.old_logps is not None and batch.ref_logps is not None
    penalised = batch.rewards - 0.5 * ((batch.old_logps - batch.ref_logps) * batch.mask).sum(1)
    torch.testing.assert_close(batch.advantages, rloo_advantages(penalised.view(2, 8)).flatten())


def test_train_grpo_changes_every_parameter_and_keeps_the_reference(tokenizer) -> None:
    model, ref = tiny_lm(tokenizer), tiny_lm(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = train_grpo(model, tokenizer, list(PROMPTS), count_e, config(3, lr=1e-3),
                         ref_model=ref)  # fmt: skip
    assert metrics.steps == 3 and all(math.isfinite(loss) for loss in metrics.losses)
    assert metrics.n_completions == 8 * (4 + 1 + 4)  # 5 prompts in batches of 4: 4, 1, 4
    assert all(math.isfinite(kl) and kl >= 0 for kl in metrics.kls)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    fresh = tiny_lm(tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), fresh.parameters(), strict=True))


@pytest.mark.parametrize(
    "variant", [{"algo": "grpo"}, {"algo": "rloo"}, {"loss_type": "dr_grpo"}], ids=str
)
def test_the_reward_rises(tokenizer, variant) -> None:
    # A random tiny GPT-2 writes about 2.5 e's in 8 tokens; 30 steps at lr 1e-2 reach 6 to 12
    # (seeds 0-2, every variant), so a rise of 2 leaves a wide margin.
    model = tiny_lm(tokenizer)
    metrics = train_grpo(model, tokenizer, list(PROMPTS), count_e, config(30, **variant))
    first, last = np.mean(metrics.reward_means[:5]), np.mean(metrics.reward_means[-5:])
    assert last > first + 2.0, (first, last)


def test_bad_input_gets_clear_errors(tokenizer) -> None:
    model = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="no prompts"):
        train_grpo(model, tokenizer, [], count_e, config(1))
    long_prompt = " ".join(["word"] * 200)  # > the tiny model's 128 positions
    wide = GRPOConfig(max_completion_length=8, optim=replace(GRPO_OPTIM, max_length=4096))
    with pytest.raises(ValueError, match="context holds 128.*shorten the prompts"):
        train_grpo(model, tokenizer, [long_prompt], count_e, wide)
    with pytest.raises(ValueError, match="exceed optim.max_length"):
        train_grpo(model, tokenizer, [long_prompt], count_e, config(1))
    with pytest.raises(ValueError, match="shape \\[N\\]"):
        train_grpo(model, tokenizer, list(PROMPTS), lambda p, c: [1.0], config(1))
    with pytest.raises(ValueError, match="NaN reward"):
        train_grpo(model, tokenizer, list(PROMPTS), lambda p, c: [math.nan] * len(c), config(1))


def test_beta_zero_keeps_no_reference(tokenizer) -> None:
    model = tiny_lm(tokenizer)
    metrics = train_grpo(model, tokenizer, list(PROMPTS), count_e, config(1, beta=0.0))
    assert math.isnan(metrics.kls[0]) and math.isfinite(metrics.losses[0])
    assert metrics.steps == 1
