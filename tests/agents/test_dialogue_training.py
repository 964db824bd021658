"""Training on multi-turn dialogues: the user's tokens never reach a policy loss; GRPO learns.

The masked-loss tests perturb a model's logits only where they predict *user* tokens: the GRPO
and DPO losses must not move (and must move when a policy token's logits are perturbed).
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.text.dialogue import (
    DialogueSampler,
    SampledDialogues,
    dialogue_eval,
    dialogue_pairs,
)
from agents.text.dpo import DPOConfig, pair_logps, train_dpo
from agents.text.dpo_losses import dpo_loss
from agents.text.grpo import GRPO_OPTIM, GRPOConfig, token_logps, train_grpo
from agents.text.grpo_losses import grpo_loss
from agents.text.lm_policy import CausalLMPolicy, frozen_reference
from agents.text.optim import DPO_OPTIM
from envs.text import TextTask, make_text_teacher
from envs.text.default_model import default_tokenizer, tiny_gpt2_config
from envs.text.dialogue import DialogueEnv
from envs.text.dialogue_user import UserRules

torch.set_num_threads(1)
TURN = 8  # tokens per policy turn (EOS included)


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def tiny_lm(tok, seed: int = 0) -> nn.Module:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2)).eval()


def sampler_for(tok, goals=("tone", "topic"), n: int = 8, **kwargs) -> DialogueSampler:
    envs = [DialogueEnv(goals, tokenizer=tok, max_turn_tokens=TURN, **kwargs) for _ in range(n)]
    return DialogueSampler(envs, tok, TURN)


@pytest.fixture(scope="module")
def sampler(tok) -> DialogueSampler:
    return sampler_for(tok)


@pytest.fixture(scope="module")
def openings(sampler) -> list[str]:
    return [s.opening for s in sampler.envs[0].scenarios]


@pytest.fixture(scope="module")
def dialogues(tok, sampler, openings) -> SampledDialogues:
    return sampler.sample(tiny_lm(tok), openings[:8], seed=0)


class ShiftedLogits(nn.Module):
    """``model`` with seeded noise added to the logits at the ``[N, L]`` positions ``at``."""

    def __init__(self, model: nn.Module, at: Tensor) -> None:
        super().__init__()
        self.model, self.at = model, at

    def forward(self, **kwargs) -> SimpleNamespace:
        logits = self.model(**kwargs).logits
        noise = 5.0 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
        return SimpleNamespace(logits=logits + noise * self.at[..., None])


def user_tokens(d: SampledDialogues) -> Tensor:
    return (d.samples.completion_mask > 0) & (d.loss_mask == 0)


# ----------------------------------------------------------------------------- sampling


def test_sampled_dialogues_are_the_envs_episodes(tok, sampler, openings, dialogues) -> None:
    d = dialogues
    score = sampler.envs[0].dialogue_scorer()
    texts = zip(d.samples.prompts, d.samples.texts, strict=True)
    np.testing.assert_allclose([score(o, t) for o, t in texts], d.scores)
    assert bool((d.loss_mask <= d.samples.completion_mask).all())
    assert set(d.ends) <= {"goal", "left", "cap"} and ((d.ends != "cap") == d.samples.eos).all()
    # The loss mask's zeros are exactly the user's replies (the "user:" lines of the text).
    for row, text in enumerate(d.samples.texts):
        replies = [line.removeprefix("user: ") for line in text.split("\n") if line[:5] == "user:"]
        user_ids = d.samples.completion_ids[row][user_tokens(d)[row]].tolist()
        assert user_ids == [t for r in replies for t in tok(" " + r)["input_ids"]]
    # Each policy turn ends with EOS (or the cap): policy tokens come in runs of <= TURN.
    eos = tok.eos_token_id
    policy_eos = ((d.samples.completion_ids == eos) & (d.loss_mask > 0)).sum(1)
    assert bool((policy_eos <= torch.as_tensor(d.turns)).all())
    again = sampler.sample(tiny_lm(tok), openings[:8], seed=0)
    assert torch.equal(again.samples.completion_ids, d.samples.completion_ids)
    assert again.samples.texts == d.samples.texts


# ----------------------------------------------------------------------------- masked losses


def grpo_objective(model: nn.Module, d: SampledDialogues, old: Tensor, ref: Tensor) -> Tensor:
    """The clipped loss with its k3 term, old and reference log-probs from other models."""
    advantages = torch.linspace(-1.0, 1.0, len(old))
    logps = token_logps(model, d.samples)
    return grpo_loss(logps, old, ref, advantages, d.loss_mask.float(), beta=0.1).loss


def test_grpo_loss_ignores_the_user_tokens(tok, dialogues) -> None:
    d, model = dialogues, tiny_lm(tok)
    assert user_tokens(d).any() and (d.loss_mask > 0).any(), "both roles are present"
    n_prompt = d.samples.prompt_ids.shape[1]
    # Position n_prompt + j - 1 predicts completion token j.
    width = n_prompt + d.samples.completion_ids.shape[1]
    predicts_user = torch.zeros(len(d.loss_mask), width, dtype=torch.bool)
    predicts_user[:, n_prompt - 1 : -1] = user_tokens(d)
    with torch.no_grad():
        old, ref = (token_logps(tiny_lm(tok, seed), d.samples) for seed in (1, 2))
    base = grpo_objective(model, d, old, ref)
    shifted = grpo_objective(ShiftedLogits(model, predicts_user), d, old, ref)
    assert torch.equal(shifted, base)
    predicts_policy = torch.zeros_like(predicts_user)
    predicts_policy[:, n_prompt - 1 : -1] = d.loss_mask > 0
    moved = grpo_objective(ShiftedLogits(model, predicts_policy), d, old, ref)
    assert abs((moved - base).item()) > 1e-3


def test_grpo_loss_is_blind_to_extreme_user_logps(dialogues) -> None:
    d = dialogues
    mask = d.loss_mask.float()
    logps = torch.full(mask.shape, -1.0, requires_grad=True)
    wild = torch.where(user_tokens(d), torch.tensor(1e4), torch.tensor(-1.0)).requires_grad_()
    old, adv = torch.full(mask.shape, -1.1), torch.linspace(-1.0, 1.0, len(mask))
    losses = [grpo_loss(x, old, old - 0.1, adv, mask, beta=0.1).loss for x in (logps, wild)]
    assert torch.equal(losses[0], losses[1]) and math.isfinite(losses[1].item())
    losses[1].backward()
    assert bool((wild.grad[user_tokens(d)] == 0).all())


def dpo_objective(model: nn.Module, batch, ref: tuple[Tensor, Tensor]) -> Tensor:
    chosen, rejected = pair_logps(model, batch)
    return dpo_loss(chosen, rejected, *ref, 0.1, batch.label_smoothing)[0].mean()


def labelled_pairs(tok, sampler, openings, seed: int = 0):
    model = tiny_lm(tok)
    first = sampler.sample(model, openings, seed)
    second = sampler.sample(model, openings, seed + 1)
    teacher = make_text_teacher("oracle", sampler.envs[0].dialogue_scorer(),
                                np.random.default_rng(seed))  # fmt: skip
    comparisons = teacher.label_texts(openings, first.samples.texts, second.samples.texts)
    return dialogue_pairs(first, second, comparisons, ties="keep")


def test_dpo_loss_ignores_the_user_tokens(tok, sampler, openings) -> None:
    data = labelled_pairs(tok, sampler, openings[:8])
    batch = data.collate(data.items, tok.pad_token_id)
    prompt_lengths = torch.tensor([len(p.prompt) for p in data.items] * 2)
    after_prompt = torch.arange(batch.input_ids.shape[1])[None] >= prompt_lengths[:, None]
    user = (batch.attention_mask > 0) & after_prompt & ~batch.completion_mask
    assert user.any() and batch.completion_mask.any()
    assert not (batch.completion_mask & ~after_prompt).any(), "the opening is never summed"
    model = tiny_lm(tok)
    predicts_user = torch.zeros_like(user)
    predicts_user[:, :-1] = user[:, 1:]  # position t predicts token t + 1
    with torch.no_grad():
        ref = pair_logps(tiny_lm(tok, seed=1), batch)
    base = dpo_objective(model, batch, ref)
    assert torch.equal(dpo_objective(ShiftedLogits(model, predicts_user), batch, ref), base)
    predicts_policy = torch.zeros_like(user)
    predicts_policy[:, :-1] = batch.completion_mask[:, 1:]
    moved = dpo_objective(ShiftedLogits(model, predicts_policy), batch, ref)
    assert abs((moved - base).item()) > 1e-3


# ----------------------------------------------------------------------------- trainers


class RecordActions(gym.Wrapper):
    """Records each episode's actions and its last observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.actions: list[int] = []
        self.episodes: list[tuple[list[int], dict]] = []

    def reset(self, **kwargs):
        self.actions = []
        return self.env.reset(**kwargs)

    def step(self, action):
        self.actions.append(int(action))
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self.episodes.append((self.actions, obs))
        return obs, reward, terminated, truncated, info


def test_ppo_kl_acts_only_on_policy_tokens_and_trains(tok) -> None:
    policy = CausalLMPolicy(tiny_lm(tok), action_dim=len(tok))
    recorders = [RecordActions(DialogueEnv(tokenizer=tok, max_turn_tokens=TURN)) for _ in range(4)]
    env = gym.vector.SyncVectorEnv([lambda r=r: r for r in recorders])
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    config = PPOKLConfig(n_steps=32, batch_size=32, n_epochs=2, kl_coef=0.1, gamma=1.0, seed=0)
    agent = PPOKL(env, config, policy=policy, ref_policy=frozen_reference(policy))
    metrics = agent.learn(2 * 32 * 4)
    episodes = [e for r in recorders for e in r.episodes]
    assert len(episodes) >= 4
    for actions, obs in episodes:
        real = obs["attention_mask"] > 0
        # The episode's actions are exactly the tokens marked as the policy's, in order; the
        # user's tokens (role 0 after the opening) were appended by the env, never acted.
        assert obs["input_ids"][real][obs["role"][real] == 1].tolist() == actions
        assert (obs["role"][real] == 0).sum() > int(obs["prompt_length"][0])
    assert all(np.isfinite(m.policy_loss) and np.isfinite(m.value_loss) for m in metrics)
    unchanged = [k for k, v in policy.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_dpo_on_dialogue_pairs_changes_every_parameter(tok, sampler, openings) -> None:
    data = labelled_pairs(tok, sampler, openings[:16], seed=3)
    model = tiny_lm(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = DPOConfig(optim=replace(DPO_OPTIM, learning_rate=1e-3, batch_size=4, max_steps=3))
    metrics = train_dpo(model, None, tok, data, config)
    assert metrics.steps == 3 and all(math.isfinite(loss) for loss in metrics.losses)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_grpo_on_dialogues_beats_the_starting_policy(tok) -> None:
    # Upbeat-user dialogues. A random tiny GPT-2 scores about 0.05 (it rarely says something
    # nice, so the user leaves); 30 GRPO steps reach about 0.9 (goal met in the first turn).
    sampler = sampler_for(tok, goals=("tone",), n=32)
    openings = [s.opening for s in sampler.envs[0].scenarios]
    model = tiny_lm(tok)
    before = dialogue_eval(sampler, model, openings * 2, seed=123)
    score = sampler.envs[0].dialogue_scorer()
    optim = replace(GRPO_OPTIM, learning_rate=1e-2, batch_size=4, max_steps=30, seed=0)
    config = GRPOConfig(max_completion_length=TURN, optim=optim)
    metrics = train_grpo(model, tok, openings, lambda p, c: list(map(score, p, c)),
                         config, sampler=sampler)  # fmt: skip
    after = dialogue_eval(sampler, model, openings * 2, seed=123)
    assert after > before + 0.4, (before, after)
    assert metrics.mean_lengths[-1] <= TURN * 3, "mean_length counts the policy's tokens only"


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(tok, sampler, openings, dialogues) -> None:
    long_env = DialogueEnv(tokenizer=tok, max_turn_tokens=40, rules=UserRules(max_turns=3))
    with pytest.raises(ValueError, match="context holds 128.*smaller max_turn_tokens"):
        DialogueSampler([long_env], tok, 40).sample(tiny_lm(tok), openings[:1], seed=0)
    wrong_cap = DialogueSampler([DialogueEnv(tokenizer=tok, max_turn_tokens=4)], tok, TURN)
    with pytest.raises(ValueError, match="give DialogueSampler the envs' max_turn_tokens"):
        wrong_cap.sample(tiny_lm(tok), openings[:4], seed=0)
    with pytest.raises(ValueError, match="'role' entry"):
        DialogueSampler([TextTask("sentiment", tok)], tok, TURN)
    data = labelled_pairs(tok, sampler, openings[:4])
    with pytest.raises(ValueError, match="pairwise losses"):
        train_dpo(tiny_lm(tok), None, tok, data, DPOConfig(loss="kto"))
    shuffled = sampler.sample(tiny_lm(tok), openings[1:9], seed=0)
    with pytest.raises(ValueError, match="different openings"):
        dialogue_pairs(dialogues, shuffled, [SimpleNamespace(label=0.0)] * 8)
