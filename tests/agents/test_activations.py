"""GPT-2's gelu_new swapped for torch's fused GELU-tanh: the same function, the same model outputs
and gradients, nothing changed on disk, an off switch, and every text trainer applies it."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from agents.text.activations import FusedGELUTanh, fuse_activations
from agents.text.dpo import DPOConfig, PreferencePair, train_dpo
from agents.text.grpo import GRPO_OPTIM, GRPOConfig, train_grpo
from agents.text.lm_policy import CausalLMPolicy
from agents.text.optim import DPO_OPTIM, LMOptimConfig
from agents.text.sft import TextSFTConfig, train_text_sft
from envs.text.default_model import default_tokenizer, tiny_gpt2_config

torch.set_num_threads(1)


def tiny_lm(tok, seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=3, n_embd=32, n_head=2)).eval()


def new_gelu_count(model) -> int:
    return sum(type(m).__name__ == "NewGELUActivation" for m in model.modules())


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def test_the_fused_kernel_computes_gelu_new() -> None:
    from transformers.activations import NewGELUActivation

    x = torch.cat([torch.linspace(-16, 16, 200_001), 16 * torch.rand(100_000) - 8])
    x.requires_grad_(True)
    reference = NewGELUActivation()(x)
    fused = FusedGELUTanh()(x)
    assert float((reference - fused).detach().abs().max()) <= 5e-7
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    (grad_fused,) = torch.autograd.grad(fused.sum(), x)
    torch.testing.assert_close(grad_fused, grad_reference, atol=2e-6, rtol=1e-5)


def test_swap_keeps_outputs_gradients_and_saved_files(tok, tmp_path) -> None:
    from transformers import GPT2LMHeadModel

    model = tiny_lm(tok)
    original = copy.deepcopy(model)
    assert fuse_activations(model) == 3 and new_gelu_count(model) == 0
    assert fuse_activations(model) == 0  # idempotent
    ids = torch.randint(3, len(tok), (4, 12))
    outputs = [m(input_ids=ids).logits for m in (model, original)]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)
    for out in outputs:
        out.float().log_softmax(-1)[..., 5].sum().backward()
    for (name, a), b in zip(model.named_parameters(), original.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    # Modules changed, not the config: the saved model reloads as it was written.
    model.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert reloaded.config.activation_function == original.config.activation_function
    assert new_gelu_count(reloaded) == 3


def test_off_switch_and_no_model(tok, monkeypatch) -> None:
    assert fuse_activations(None) == 0
    monkeypatch.setenv("PREFENV_FUSED_ACTIVATIONS", "0")
    model = tiny_lm(tok)
    assert fuse_activations(model) == 0 and new_gelu_count(model) == 3


def test_every_text_trainer_and_the_policy_fuse(tok) -> None:
    pairs = [PreferencePair("The plot was", " great.", " bad."),
             PreferencePair("The soup", " was lovely.", " was awful.")]  # fmt: skip
    model, ref = tiny_lm(tok), tiny_lm(tok, seed=1)
    train_dpo(model, ref, tok, pairs, DPOConfig(optim=replace(DPO_OPTIM, max_steps=1)))
    assert new_gelu_count(model) == new_gelu_count(ref) == 0
    model = tiny_lm(tok)
    optim = replace(GRPO_OPTIM, batch_size=2, max_steps=1)
    config = GRPOConfig(num_generations=2, max_completion_length=3, optim=optim)
    train_grpo(model, tok, ["The plot was", "The soup"], lambda p, c: [0.0, 1.0] * 2, config)
    assert new_gelu_count(model) == 0
    assert new_gelu_count(CausalLMPolicy(tiny_lm(tok)).model) == 0
    model = tiny_lm(tok)
    demos = [("The plot was", " great."), ("The soup", " was lovely.")]
    train_text_sft(model, tok, demos, TextSFTConfig(LMOptimConfig(1e-3, batch_size=2, max_steps=1)))
    assert new_gelu_count(model) == 0
