"""CausalLMPolicy: the cached rollout path equals the full forward; the Policy contract."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from agents.policies import Policy
from agents.text.lm_policy import CausalLMPolicy, frozen_reference
from envs.text import TextTask, default_tokenizer, tiny_gpt2_config

PROMPTS = ["The pasta was", "I", "To be honest, the soundtrack was really", "", "This movie"]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _policy(tok, extra_rows: int = 0, n_layer: int = 2) -> CausalLMPolicy:
    torch.manual_seed(0)
    config = tiny_gpt2_config(len(tok) + extra_rows, n_layer=n_layer, n_embd=32, n_head=2)
    policy = CausalLMPolicy(GPT2LMHeadModel(config).eval(), action_dim=len(tok))
    torch.nn.init.normal_(policy.value_head.weight, std=0.5)  # non-trivial values to compare
    return policy


def _vector_env(tok, n: int = 5, prompts: list[str] = PROMPTS) -> gym.vector.SyncVectorEnv:
    # Different max_new_tokens per env (same window) so episodes end and reset out of step.
    def make(i: int):
        return lambda: TextTask("sentiment", tok, prompts, max_prompt_tokens=14 - i,
                                max_new_tokens=3 + i)  # fmt: skip

    return gym.vector.SyncVectorEnv([make(i) for i in range(n)])


def _as_buffer_obs(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # The PPO buffer stores Box/MultiBinary observations as float32.
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in obs.items()}


def test_is_a_policy(tok) -> None:
    policy = _policy(tok)
    assert isinstance(policy, Policy)
    assert policy.action_dim == len(tok)


@pytest.mark.parametrize(("n_layer", "prompts"), [(3, PROMPTS), (1, [""])])
def test_cached_rollout_log_probs_equal_full_forward(tok, n_layer: int, prompts: list[str]) -> None:
    policy = _policy(tok, extra_rows=7, n_layer=n_layer)
    ref = frozen_reference(policy)
    env = _vector_env(tok, prompts=prompts)
    obs, _ = env.reset(seed=0)
    resets = 0
    for _ in range(25):
        obs_t = _as_buffer_obs(obs)
        actions, log_probs, values = policy.act(obs_t)
        assert int(actions.max()) < len(tok)  # extra model rows are never sampled
        with torch.no_grad():
            full_lp = policy.log_prob(obs_t, actions)  # full forward (incremental off)
            ref_lp = ref.log_prob(obs_t, actions)  # the reference's own cache
            full_values = policy.value(obs_t)
            eval_lp, entropy, eval_values = policy.evaluate(obs_t, actions)
        torch.testing.assert_close(log_probs, full_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(ref_lp, full_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(eval_lp, full_lp, atol=1e-6, rtol=0)
        torch.testing.assert_close(values, full_values, atol=1e-5, rtol=0)
        assert torch.isfinite(entropy).all() and (entropy > 0).all()
        obs, _, terminated, truncated, _ = env.step(actions.numpy())
        resets += int((terminated | truncated).sum())
    assert resets >= 10, "the test must cover rows that restart while others continue"
    # The cache never outgrows the observation window.
    assert (
        policy._act_state.cache_mask.shape[1] <= env.single_observation_space["input_ids"].shape[0]
    )


def test_deterministic_act_is_the_full_forward_argmax(tok) -> None:
    policy = _policy(tok)
    env = _vector_env(tok, n=3)
    obs, _ = env.reset(seed=1)
    for _ in range(6):
        obs_t = _as_buffer_obs(obs)
        actions, _, _ = policy.act(obs_t, deterministic=True)
        with torch.no_grad():
            logits = policy.lm_head(policy.full_hidden(obs_t))[:, : len(tok)]
        assert torch.equal(actions, logits.argmax(-1))
        obs, *_ = env.step(actions.numpy())


def test_evaluate_has_gradients_and_reference_is_frozen(tok) -> None:
    policy = _policy(tok)
    ref = frozen_reference(policy)
    env = _vector_env(tok, n=2)
    obs_t = _as_buffer_obs(env.reset(seed=0)[0])
    actions, _, _ = policy.act(obs_t)
    log_probs, entropy, values = policy.evaluate(obs_t, actions)
    (log_probs.sum() + entropy.sum() + values.sum()).backward()
    assert policy.value_head.weight.grad is not None
    assert all(p.grad is not None for p in policy.model.transformer.h[0].parameters())
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert ref.incremental_log_prob and not policy.incremental_log_prob
    with torch.no_grad():
        torch.testing.assert_close(ref.log_prob(obs_t, actions), policy.log_prob(obs_t, actions))


def test_clear_errors(tok) -> None:
    small = GPT2LMHeadModel(tiny_gpt2_config(len(tok) - 3, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ValueError, match=r"model has \d+ output rows"):
        CausalLMPolicy(small, action_dim=len(tok))
    policy = _policy(tok)
    right_padded = {
        "input_ids": torch.tensor([[1, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0]]),
    }
    with pytest.raises(ValueError, match="left-padded"):
        policy.act(right_padded)
    with pytest.raises(TypeError, match="'input_ids' and 'attention_mask'"):
        policy.act(torch.zeros(1, 3))
    too_long = {
        "input_ids": torch.ones(1, 200, dtype=torch.long),
        "attention_mask": torch.ones(1, 200),
    }
    with pytest.raises(ValueError, match="only 128 positions"):
        policy.value(too_long)


def test_plugs_into_ppo_kl_and_trains_every_parameter(tok) -> None:
    from agents.ppo_kl import PPOKL, PPOKLConfig

    policy = _policy(tok, n_layer=1)
    env = gym.vector.SyncVectorEnv(
        [lambda: TextTask("sentiment", tok, PROMPTS, max_new_tokens=6) for _ in range(4)]
    )
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    config = PPOKLConfig(n_steps=12, batch_size=16, n_epochs=2, kl_coef=0.1, gamma=1.0, seed=0)
    agent = PPOKL(env, config, policy=policy, ref_policy=frozen_reference(policy))
    metrics = agent.learn(96)
    # First rollout: policy == reference, and both caches must agree to the last digit.
    assert abs(metrics[0].kl_to_ref) < 1e-6
    assert metrics[-1].episodes > 0 and np.isfinite(metrics[-1].kl_to_ref)
    assert np.isfinite(metrics[-1].policy_loss) and np.isfinite(metrics[-1].value_loss)
    unchanged = [k for k, v in policy.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged


def test_update_invalidates_the_rollout_cache(tok) -> None:
    policy = _policy(tok)
    env = _vector_env(tok, n=3)
    obs, _ = env.reset(seed=0)
    actions, _, _ = policy.act(_as_buffer_obs(obs))
    obs, *_ = env.step(actions.numpy())
    # A training step between two rollout steps (as PPO-KL does between iterations).
    log_probs, _, values = policy.evaluate(_as_buffer_obs(obs), actions)
    (log_probs.sum() + values.sum()).backward()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.sign(p.grad))
    obs_t = _as_buffer_obs(obs)
    actions, cached_lp, _ = policy.act(obs_t)
    with torch.no_grad():
        torch.testing.assert_close(cached_lp, policy.log_prob(obs_t, actions), atol=1e-5, rtol=0)


def test_full_forward_shares_prefixes_exactly(tok) -> None:
    # A PPO minibatch holds several steps of the same episode: each must get exactly the hidden
    # state (and gradient) of its own forward, although only the longest step is computed.
    policy = _policy(tok)
    env = _vector_env(tok, n=3)
    obs, _ = env.reset(seed=0)
    steps, acts = [], []
    for _ in range(8):
        actions, _, _ = policy.act(_as_buffer_obs(obs))
        steps.append(obs)
        acts.append(actions)
        obs, *_ = env.step(actions.numpy())
    order = torch.randperm(8 * 3, generator=torch.Generator().manual_seed(0))
    batch = {k: torch.as_tensor(np.concatenate([s[k] for s in steps]))[order] for k in obs}
    actions = torch.cat(acts)[order]
    shared = policy.log_prob(batch, actions)
    (g_shared,) = torch.autograd.grad(shared.sum(), policy.model.transformer.h[0].mlp.c_fc.weight)
    one_by_one = torch.cat(
        [policy.log_prob({k: v[i : i + 1] for k, v in batch.items()}, actions[i : i + 1])
         for i in range(len(actions))]
    )  # fmt: skip
    (g_single,) = torch.autograd.grad(
        one_by_one.sum(), policy.model.transformer.h[0].mlp.c_fc.weight
    )
    torch.testing.assert_close(shared, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_shared, g_single, atol=1e-5, rtol=1e-4)
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    from agents.text.lm_policy import _prefix_hosts

    assert len(torch.unique(_prefix_hosts(ids, mask.sum(-1)))) < len(actions)
