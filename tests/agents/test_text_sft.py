"""Text SFT: completion-only loss, learning on demonstrations, saving, clear errors."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from agents.text.optim import SFT_OPTIM, LMOptimConfig
from agents.text.sft import (
    IGNORE_INDEX,
    TextSFTConfig,
    collate_sft,
    encode_demonstrations,
    sft_loss,
    train_text_sft,
)
from envs.text.default_model import (
    VocabMismatchError,
    default_tokenizer,
    load_lm,
    tiny_gpt2_config,
)

torch.set_num_threads(1)

DEMOS = [
    ("The plot was", " great and the acting was lovely."),
    ("The soup", " was fresh and tasty."),
    ("We tried this restaurant", " and the staff was friendly."),
    ("The acting", " was brilliant."),
    ("Overall, the book", " was a delight to read."),
    ("I thought the pasta was", " perfect."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def tiny_lm(tokenizer, vocab_size: int | None = None):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = tiny_gpt2_config(vocab_size or len(tokenizer), n_layer=1, n_embd=32, n_head=2)
    return GPT2LMHeadModel(config).eval()


class FixedLogits(nn.Module):
    """A 'model' whose logits are a parameter: lets the test read gradients per position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask, use_cache=False):
        return SimpleNamespace(logits=self.logits)


def test_batch_masks_prompt_and_padding(tokenizer):
    examples = encode_demonstrations(tokenizer, DEMOS[:3], max_length=64)
    batch = collate_sft(examples, tokenizer.pad_token_id)
    for row, (prompt, completion) in enumerate(examples):
        n = len(prompt) + len(completion)
        assert prompt[0] == tokenizer.bos_token_id and completion[-1] == tokenizer.eos_token_id
        assert (batch.labels[row, : len(prompt)] == IGNORE_INDEX).all()
        assert batch.labels[row, len(prompt) : n].tolist() == completion
        assert (batch.labels[row, n:] == IGNORE_INDEX).all()
        assert batch.attention_mask[row].sum().item() == n


def test_loss_ignores_prompt_positions(tokenizer):
    examples = encode_demonstrations(tokenizer, DEMOS[:3], max_length=64)
    batch = collate_sft(examples, tokenizer.pad_token_id)
    torch.manual_seed(0)
    logits = torch.randn(*batch.input_ids.shape, len(tokenizer))
    model = FixedLogits(logits.clone())
    loss = sft_loss(model, batch)
    loss.backward()
    # position t predicts token t + 1: positions whose target is a prompt/pad token get no gradient
    predicts_completion = torch.zeros_like(batch.labels, dtype=torch.bool)
    predicts_completion[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX
    grad_norm = model.logits.grad.abs().sum(-1)
    assert (grad_norm[~predicts_completion] == 0).all()
    assert (grad_norm[predicts_completion] > 0).all()
    # changing the logits that predict prompt tokens leaves the loss unchanged
    changed = logits.clone()
    changed[~predicts_completion] = torch.randn_like(changed[~predicts_completion]) * 5
    assert sft_loss(FixedLogits(changed), batch).item() == pytest.approx(loss.item(), abs=1e-6)
    # the loss is the mean cross-entropy over completion tokens only
    logp = logits.log_softmax(-1)
    manual = [
        -logp[r, t, batch.labels[r, t + 1]] for r, t in predicts_completion.nonzero().tolist()
    ]
    assert loss.item() == pytest.approx(torch.stack(manual).mean().item(), abs=1e-5)


def test_sft_lowers_the_loss_and_saves(tokenizer, tmp_path):
    model = tiny_lm(tokenizer)
    metrics = train_text_sft(
        model, tokenizer, DEMOS,
        TextSFTConfig(LMOptimConfig(learning_rate=3e-3, batch_size=3, epochs=15, warmup_steps=2)),
        out_dir=tmp_path / "sft",
    )  # fmt: skip
    assert metrics.steps == 30 and metrics.n_demonstrations == len(DEMOS)
    assert metrics.final_loss < 0.6 * metrics.first_loss
    loaded, loaded_tok = load_lm(tmp_path / "sft")
    batch = collate_sft(encode_demonstrations(tokenizer, DEMOS, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        assert sft_loss(loaded, batch).item() == pytest.approx(sft_loss(model, batch).item())
    assert len(loaded_tok) == len(tokenizer)


def test_plain_texts_and_max_steps(tokenizer):
    model = tiny_lm(tokenizer)
    metrics = train_text_sft(
        model, tokenizer, ["the movie was great.", "the soup was bland."],
        TextSFTConfig(replace(SFT_OPTIM, max_steps=3, batch_size=1, progress=True)),
    )  # fmt: skip
    assert metrics.steps == 3
    (prompt, completion), _ = encode_demonstrations(tokenizer, ["a b", "c"], 16)
    assert prompt == [tokenizer.bos_token_id] and completion[-1] == tokenizer.eos_token_id


def test_clear_errors(tokenizer):
    with pytest.raises(VocabMismatchError, match="embedding"):
        train_text_sft(tiny_lm(tokenizer, vocab_size=64), tokenizer, DEMOS)
    model = tiny_lm(tokenizer)
    with pytest.raises(ValueError, match="no demonstrations"):
        train_text_sft(model, tokenizer, [])
    with pytest.raises(ValueError, match="demonstration 1 is .* max_length=8"):
        train_text_sft(model, tokenizer, [("a", " b"), ("The plot", " " + "long " * 20)],
                       TextSFTConfig(replace(SFT_OPTIM, max_length=8)))  # fmt: skip
    with pytest.raises(ValueError, match="context holds 128"):
        train_text_sft(
            model,
            tokenizer,
            [("The plot", " was" * 140)],
            TextSFTConfig(replace(SFT_OPTIM, max_length=512)),
        )
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        replace(SFT_OPTIM, epochs=0)
    with pytest.raises(TypeError, match="LMOptimConfig"):
        TextSFTConfig(optim={"learning_rate": 1e-3})  # type: ignore[arg-type]
