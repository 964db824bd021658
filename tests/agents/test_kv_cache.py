"""The rollout key/value cache: cached hidden states equal the full forward in every prefill mode,
across autoresets, buffer moves, architectures and inference-mode switches; exact sampling."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from agents.text.lm_policy import CausalLMPolicy, sample_categorical
from envs.text import TextTask, default_tokenizer, tiny_gpt2_config

# Prompts of 1 (BOS only) to ~9 tokens, so restarted rows need prefixes of different lengths.
PROMPTS = ["The pasta was", "I", "To be honest, the soundtrack was really", "", "This movie"]
WINDOW = 17  # max_prompt_tokens + max_new_tokens of every env below


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _vector_env(tok, n: int = 6) -> gym.vector.SyncVectorEnv:
    # Different length caps (same window) so rows end and restart at different steps.
    def make(i: int):
        return lambda: TextTask("sentiment", tok, PROMPTS, max_prompt_tokens=14 - i % 4,
                                max_new_tokens=3 + i % 4)  # fmt: skip

    return gym.vector.SyncVectorEnv([make(i) for i in range(n)])


def _obs(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obs.items()}


def _gpt2(tok) -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=2, n_embd=32, n_head=2)).eval()


def _llama(tok) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _mistral_sliding(tok) -> torch.nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        sliding_window=WINDOW, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


def _roll(policy: CausalLMPolicy, env, steps: int, seed: int = 0):
    """Yield (obs, cached hidden) for ``steps`` vector steps, acting on the cached path."""
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs_t = _obs(obs)
        hidden = policy.cached_hidden(obs_t, "act")
        yield obs_t, hidden
        with torch.no_grad():
            logits = policy.lm_head(hidden)[:, : policy.action_dim]
            actions = sample_categorical(torch.log_softmax(logits, -1))
        obs, *_ = env.step(actions.numpy())


@pytest.mark.parametrize("prefill", ["packed", "separate", "padded"])
@pytest.mark.parametrize("arch", [_gpt2, _llama, _mistral_sliding], ids=["gpt2", "llama", "swa"])
def test_cached_hidden_equals_full_forward(tok, prefill: str, arch) -> None:
    policy = CausalLMPolicy(arch(tok), action_dim=len(tok), prefill=prefill)
    env = _vector_env(tok)
    ends, restarts, previous = [], 0, None
    for obs_t, hidden in _roll(policy, env, steps=40):
        with torch.no_grad():
            full = policy.full_hidden(obs_t)
        torch.testing.assert_close(hidden, full, atol=2e-5, rtol=0)
        state = policy._act_state
        assert state is not None and state.cache_mask.shape[1] <= WINDOW
        for layer in state.layers:  # masked columns hold finite values: no NaN can leak in
            assert layer.buffers is not None and all(b.isfinite().all() for b in layer.buffers)
        lengths = obs_t["attention_mask"].sum(-1)
        if previous is not None:
            restarts += int((lengths != previous + 1).sum())
        previous = lengths
        ends.append(state.span.end)
    assert restarts >= 15, "rows must restart while others continue"
    assert any(b < a for a, b in zip(ends, ends[1:], strict=False)), "the buffers never moved"


def test_the_three_prefill_modes_agree(tok) -> None:
    model = _gpt2(tok)
    separate = CausalLMPolicy(model, action_dim=len(tok), prefill="separate")
    others = [CausalLMPolicy(model, action_dim=len(tok), prefill=p) for p in ("packed", "padded")]
    for obs_t, hidden in _roll(separate, _vector_env(tok), steps=20, seed=3):
        for policy in others:
            torch.testing.assert_close(
                policy.cached_hidden(obs_t, "act"), hidden, atol=1e-5, rtol=0
            )


def _forwards(policy: CausalLMPolicy, env, steps: int) -> int:
    """Trunk forwards during ``steps`` cached steps (after the first, which prefills every row)."""
    calls = []
    rollout = _roll(policy, env, steps=steps)
    next(rollout)
    hook = policy.base.register_forward_hook(lambda *_: calls.append(1))
    for _ in rollout:
        pass
    hook.remove()
    return len(calls)


def test_a_packed_step_is_one_forward_and_restores_the_attention(tok) -> None:
    model = _gpt2(tok)
    attention = model.config._attn_implementation
    packed = CausalLMPolicy(model, action_dim=len(tok))  # the default where the model allows it
    separate = CausalLMPolicy(model, action_dim=len(tok), prefill="separate")
    assert _forwards(packed, _vector_env(tok), steps=30) == 29
    assert model.config._attn_implementation == attention  # generate etc. see the model as it was
    assert _forwards(separate, _vector_env(tok), steps=30) > 29 + 10  # restarts cost a forward


def test_packing_needs_the_attention_interface(tok, monkeypatch) -> None:
    from transformers import GPT2Model

    monkeypatch.setattr(GPT2Model, "_supports_attention_backend", False)
    with pytest.raises(ValueError, match="AttentionInterface.*use 'separate' or 'padded'"):
        CausalLMPolicy(_gpt2(tok), action_dim=len(tok), prefill="packed")
    with pytest.raises(ValueError, match="prefill='fast'"):
        CausalLMPolicy(_gpt2(tok), action_dim=len(tok), prefill="fast")
    policy = CausalLMPolicy(_gpt2(tok), action_dim=len(tok))  # falls back to a separate prefill
    assert _forwards(policy, _vector_env(tok), steps=30) > 29 + 10


def test_packed_attention_refuses_what_it_does_not_implement() -> None:
    from agents.text.kv_buffers import packed_attention, packing
    from agents.text.kv_cache import _Packing

    q = torch.zeros(1, 2, 3, 4)
    kv = torch.zeros(3, 2, 5, 4)
    with pytest.raises(RuntimeError, match="only inside a packed cache step"):
        packed_attention(None, q, kv, kv, None)
    plan = _Packing(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.ones(3, 1, 1, 5) > 0)
    context = packing.set(plan)
    try:
        out, _ = packed_attention(None, q, kv, kv, None, softcap=None)  # None: nothing asked
        assert out.shape == (1, 3, 2, 4)
        for option in ("softcap", "s_aux"):
            with pytest.raises(NotImplementedError, match=f"{option}.*prefill='separate'"):
                packed_attention(None, q, kv, kv, None, **{option: torch.ones(2)})
    finally:
        packing.reset(context)


def test_cache_built_in_inference_mode_is_rebuilt_outside_it(tok) -> None:
    # The trainer rolls out under torch.inference_mode; an evaluation may then step the same
    # policy under no_grad, where inference tensors cannot be written in place.
    policy = CausalLMPolicy(_gpt2(tok), action_dim=len(tok))
    env = _vector_env(tok, n=3)
    obs, _ = env.reset(seed=0)
    with torch.inference_mode():
        actions, _, _ = policy.act(_obs(obs))
    obs, *_ = env.step(actions.numpy())
    obs_t = _obs(obs)
    actions, log_probs, _ = policy.act(obs_t)
    with torch.no_grad():
        torch.testing.assert_close(log_probs, policy.log_prob(obs_t, actions), atol=1e-5, rtol=0)


def test_a_different_batch_starts_a_new_cache(tok) -> None:
    policy = CausalLMPolicy(_gpt2(tok), action_dim=len(tok))
    for n in (4, 2):  # e.g. a rollout, then an evaluation on fewer envs
        env = _vector_env(tok, n=n)
        for obs_t, hidden in _roll(policy, env, steps=5):
            with torch.no_grad():
                torch.testing.assert_close(hidden, policy.full_hidden(obs_t), atol=1e-5, rtol=0)


def test_sample_categorical_follows_the_distribution() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0, -float("inf"), 0.5, -200.0])
    log_p = torch.log_softmax(logits, -1).expand(200_000, -1)
    draws = sample_categorical(log_p)
    freq = torch.bincount(draws, minlength=len(logits)).double() / len(draws)
    expected = log_p[0].exp().double()
    assert int(freq[4]) == 0 and int(freq[6]) == 0  # zero probability is never drawn
    # Binomial standard error at n=200k is <= 0.0012: 5 sigma.
    torch.testing.assert_close(freq, expected, atol=6e-3, rtol=0)
    assert draws.shape == (200_000,) and draws.dtype == torch.int64
