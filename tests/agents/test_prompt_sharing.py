"""A group's prompt runs once in the log-prob forward (GRPO's loss): the same log-probs and
gradients as one full forward per row (the shared keys and values carry every row's gradient back
to the prompt). The sampler's shared prefill is tested with the sampling distributions in
tests/prefenv/test_text_monitoring.py (its ``grouped`` case).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from agents.text.grpo import token_logps
from agents.text.kv_cache import distinct_rows, positions
from agents.text.sampling import sample_completions
from envs.text.default_model import default_tokenizer, tiny_gpt2_config

torch.set_num_threads(1)

# Groups of 3 in a shuffled order, prompts of different lengths (so rows are left-padded).
PROMPTS = ["The soup", "We tried this restaurant", "The soup", "Overall, the book",
           "We tried this restaurant", "The soup", "Overall, the book", "Overall, the book",
           "We tried this restaurant"]  # fmt: skip


def tiny_lm(tok, seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=2, n_embd=32, n_head=2)).eval()


def small_llama(tok, sliding_window: int | None = None):
    """A tiny Llama, or with ``sliding_window`` a tiny Mistral whose window is shorter than a
    prompt plus its completion (so the shared cache must respect the window)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)  # fmt: skip
    if sliding_window is None:
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    return MistralForCausalLM(MistralConfig(sliding_window=sliding_window, **common)).eval()


def full_forward_logps(model, samples) -> torch.Tensor:
    """The reference: one forward over every row's whole ``[prompt | completion]``."""
    ids = torch.cat([samples.prompt_ids, samples.completion_ids], 1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], 1)
    n_prompt = samples.prompt_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    logp = logits[:, n_prompt - 1 : -1].float().log_softmax(-1)
    return logp.gather(-1, samples.completion_ids[..., None])[..., 0] * samples.completion_mask


def test_distinct_rows_finds_the_groups_and_ignores_padding() -> None:
    ids = torch.tensor([[0, 5, 6], [9, 5, 6], [7, 5, 6], [0, 5, 6], [4, 4, 4]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    first, inverse = distinct_rows(ids, mask)
    # Rows 0, 1 and 3 are one prompt (their padding ids differ); 2 and 4 are their own.
    assert inverse[0] == inverse[1] == inverse[3]
    assert len({int(inverse[0]), int(inverse[2]), int(inverse[4])}) == 3
    assert len(first) == 3
    # ``first`` holds each group's first row, in the order ``inverse`` numbers them.
    assert first[inverse[0]] == 0 and first[inverse[2]] == 2 and first[inverse[4]] == 4
    assert bool((inverse[first] == torch.arange(3)).all())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral_window_6"])
def test_shared_prompt_logps_and_gradients_equal_the_full_forward(arch: str) -> None:
    tok = default_tokenizer()
    model = {"gpt2": lambda: tiny_lm(tok), "llama": lambda: small_llama(tok),
             "mistral_window_6": lambda: small_llama(tok, sliding_window=6)}[arch]()  # fmt: skip
    samples = sample_completions(model, tok, PROMPTS, max_new_tokens=7, seed=1)
    assert len(distinct_rows(samples.prompt_ids, samples.prompt_mask)[0]) == 3  # shared path
    weights = torch.linspace(-1.0, 2.0, len(PROMPTS))[:, None]

    shared = token_logps(model, samples)
    (shared * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # Plain copies of the sampler's (inference-mode) tensors, which autograd cannot save.
    plain = replace(samples, **{name: getattr(samples, name).clone() for name in
                                ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")})  # fmt: skip
    reference = full_forward_logps(model, plain)
    (reference * weights).sum().backward()

    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    # The token embeddings of the prompts get gradient through the shared keys and values.
    embeddings = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is embeddings)
    assert float(grads[name][samples.prompt_ids[0, -1]].abs().sum()) > 0
