"""The offline default LM: tokenizer, tiny GPT-2, save/load round trips and the vocab check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from envs.text import (
    VocabMismatchError,
    build_default_lm,
    check_vocab,
    default_tokenizer,
    load_lm,
    tiny_gpt2_config,
)
from envs.text.corpus import generate_corpus, generate_prompts

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


def test_corpus_and_prompts_are_seeded() -> None:
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)
    lengths = [len(r.split()) for r in generate_corpus(300)]
    assert min(lengths) < 6 and max(lengths) > 20
    assert len(set(generate_prompts(100))) > 30


def test_default_tokenizer_is_deterministic_with_special_tokens() -> None:
    tok = default_tokenizer()
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|pad|>", "<|bos|>", "<|eos|>"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok("The pasta was delicious.")["input_ids"][0] != tok.bos_token_id  # BOS is explicit
    text = "The pasta was delicious. Zebra 42!"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: no unknown tokens
    assert default_tokenizer().get_vocab() == tok.get_vocab()


def test_tokenizer_save_from_pretrained_round_trip(tmp_path: Path) -> None:
    tok = default_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "I thought the soundtrack was really charming, but the ending felt long."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        tok.bos_token,
        tok.eos_token,
        tok.pad_token,
    )
    assert len(loaded) == len(tok)


def test_build_default_lm_trains_and_round_trips(tmp_path: Path) -> None:
    report = build_default_lm(tmp_path, seed=0, train_steps=12, batch_size=4, corpus_size=64,
                              learning_rate=1e-2, **TINY)  # fmt: skip
    assert report.final_loss < report.first_loss
    assert json.loads((tmp_path / "prefenv_lm.json").read_text())["train_steps"] == 12
    model, tok = load_lm(tmp_path)
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    assert len(tok) == report.vocab_size == model.config.vocab_size
    assert sum(p.numel() for p in model.parameters()) == report.n_params
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.tensor([[tok.bos_token_id, *tok("The pasta was")["input_ids"]]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits)
    again = build_default_lm(tmp_path / "again", seed=0, train_steps=12, batch_size=4,
                             corpus_size=64, learning_rate=1e-2, **TINY)  # fmt: skip
    assert again.final_loss == report.final_loss  # seeded end to end


def test_vocab_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    tok = default_tokenizer()
    small = GPT2LMHeadModel(tiny_gpt2_config(len(tok) - 10, **TINY))
    with pytest.raises(
        VocabMismatchError, match=rf"{len(tok)} tokens .* only {len(tok) - 10} rows"
    ):
        check_vocab(tok, small)
    small.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(VocabMismatchError, match="resize_token_embeddings"):
        load_lm(tmp_path)
    check_vocab(tok, GPT2LMHeadModel(tiny_gpt2_config(len(tok) + 64, **TINY)))  # larger is fine


def test_load_lm_refuses_hub_names() -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_lm("gpt2")
