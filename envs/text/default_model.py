"""The offline default language model: a project-trained tokenizer and a tiny GPT-2.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained with ``tokenizers``
on the generated corpus (:mod:`envs.text.corpus`) and wrapped as a
``transformers.PreTrainedTokenizerFast``; the model is a ``GPT2LMHeadModel`` built from a
``GPT2Config`` (about 1M parameters by default) and pretrained briefly on the same corpus. Both
are written with ``save_pretrained`` so that any Hugging Face code loads them back with
``from_pretrained(local_dir)``.

Public API:

- :func:`default_tokenizer`: the deterministic default tokenizer (built in well under a second,
  memoised per process), what the registered text tasks use when no tokenizer is given.
- :func:`build_default_lm`: train and save the default model + tokenizer to a directory.
- :func:`load_lm`: load *any* local causal LM + tokenizer directory, with a vocabulary check.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from envs.text.corpus import generate_corpus
from prefenv.text_records import VocabMismatchError, check_vocab

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "DefaultLMReport",
    "VocabMismatchError",
    "build_default_lm",
    "check_vocab",
    "default_tokenizer",
    "load_lm",
    "tiny_gpt2_config",
    "train_tokenizer",
]

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"

_TOKENIZER_CORPUS = (2000, 0)  # (reviews, seed) the default tokenizer is trained on
_DEFAULT_VOCAB = 1024


def train_tokenizer(
    texts: Sequence[str], vocab_size: int = _DEFAULT_VOCAB
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts).

    Byte-level: any string encodes without unknown tokens. Specials: ``<|pad|>`` (id 0),
    ``<|bos|>`` (1), ``<|eos|>`` (2); they are not added automatically (the env prepends BOS and
    the pretraining loop appends EOS explicitly). The vocabulary stops growing below
    ``vocab_size`` when no merge is left.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> PreTrainedTokenizerFast:
    n, seed = _TOKENIZER_CORPUS
    return train_tokenizer(generate_corpus(n, seed), _DEFAULT_VOCAB)


def default_tokenizer() -> PreTrainedTokenizerFast:
    """The default tokenizer (trained on the generated corpus; a fresh copy per call).

    Deterministic, so the tokenizer saved by :func:`build_default_lm` equals this one.
    """
    import copy

    return copy.deepcopy(_default_tokenizer())


def tiny_gpt2_config(
    vocab_size: int,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 128,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
):
    """A small ``GPT2Config`` (defaults: 4 layers, width 128: ~0.9M parameters at vocab ~1k)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


@dataclass(frozen=True)
class DefaultLMReport:
    """What :func:`build_default_lm` did (also saved as ``prefenv_lm.json`` next to the model).

    Attributes:
        path: the directory holding the model and tokenizer.
        n_params: model parameter count.
        vocab_size: tokenizer size (= model embedding rows).
        train_steps: optimisation steps taken.
        first_loss: mean token cross-entropy of the first batch (nats).
        final_loss: mean token cross-entropy over the last 10 steps (nats).
        seconds: wall time of the build.
    """

    path: str
    n_params: int
    vocab_size: int
    train_steps: int
    first_loss: float
    final_loss: float
    seconds: float


@contextlib.contextmanager
def _seeded(seed: np.random.SeedSequence) -> Iterator[None]:
    """Run a block on a torch RNG stream seeded from ``seed``, leaving the global stream as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed.generate_state(1)[0]))
        yield


def _encode_corpus(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *ids, eos] for ids in tokenizer(list(texts))["input_ids"]]


def _pack(seqs: list[list[int]], block: int) -> torch.Tensor:
    """Concatenate ``[BOS, review, EOS]`` sequences and cut them into ``[n_blocks, block]``.

    Packing (as in GPT pretraining) wastes no compute on padding; the model also learns that a
    new review starts after EOS.
    """
    import torch

    flat = np.fromiter((t for seq in seqs for t in seq), dtype=np.int64)
    n_blocks = len(flat) // block
    if n_blocks == 0:
        raise ValueError(f"the corpus has {len(flat)} tokens, fewer than one block of {block}")
    return torch.from_numpy(flat[: n_blocks * block].reshape(n_blocks, block))


def build_default_lm(
    directory: str | Path,
    seed: int = 0,
    train_steps: int = 200,
    batch_size: int = 16,
    block_size: int = 64,
    learning_rate: float = 3e-3,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    corpus_size: int = 6000,
) -> DefaultLMReport:
    """Pretrain the default tiny GPT-2 on the generated corpus and save it to ``directory``.

    The result is the starting point of the text pipeline (SFT then RL). It loads with
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` /
    ``AutoTokenizer.from_pretrained(directory)``, or with :func:`load_lm`. The defaults
    (200 steps x 16 x 64 tokens) take about 30 s on one free CPU core; on a busy machine
    ``torch.set_num_threads(1)`` beforehand is often faster than more threads.

    Args:
        directory: output directory (created; existing model files are overwritten).
        seed: spawns independent streams for the model init, the corpus and training (batch
            order and dropout).
        train_steps: AdamW steps (linear warm-up over 10% of them, then cosine decay).
        batch_size: token blocks per step.
        block_size: tokens per block (the corpus is packed: reviews back to back).
        learning_rate: peak AdamW learning rate.
        n_layer: transformer blocks.
        n_embd: model width.
        n_head: attention heads.
        corpus_size: generated reviews to train on.
    """
    from transformers import GPT2LMHeadModel

    start = time.perf_counter()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = default_tokenizer()
    config = tiny_gpt2_config(
        len(tokenizer),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    init_seed, corpus_seed, train_seed = np.random.SeedSequence(seed).spawn(3)
    with _seeded(init_seed):
        model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the default; naming it silences a transformers warning
    if block_size > config.n_positions:
        raise ValueError(f"block_size {block_size} exceeds n_positions {config.n_positions}")
    blocks = _pack(_encode_corpus(tokenizer, generate_corpus(corpus_size, seed=corpus_seed)),
                   block_size)  # fmt: skip
    losses = _pretrain(model, blocks, train_seed, train_steps, batch_size, learning_rate)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = DefaultLMReport(
        path=str(out),
        n_params=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        train_steps=train_steps,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=float(np.mean(losses[-10:])) if losses else float("nan"),
        seconds=time.perf_counter() - start,
    )
    (out / "prefenv_lm.json").write_text(json.dumps({**asdict(report), "seed": seed}, indent=2))
    return report


def _pretrain(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    seed: np.random.SeedSequence,
    train_steps: int,
    batch_size: int,
    learning_rate: float,
) -> list[float]:
    """Causal-LM training loop; returns the loss of every step.

    ``seed`` spawns the batch-order stream (numpy) and the dropout stream (torch).
    """
    import torch

    batch_seed, dropout_seed = seed.spawn(2)
    rng = np.random.default_rng(batch_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, train_steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, train_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    with _seeded(dropout_seed):
        for _ in range(train_steps):
            ids = blocks[torch.from_numpy(rng.integers(len(blocks), size=batch_size))]
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses


def load_lm(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal LM and its tokenizer from one directory (no download).

    Works for any directory written by ``model.save_pretrained`` + ``tokenizer.save_pretrained``
    (GPT-2, Llama, ... and :func:`build_default_lm`'s output). A tokenizer without a pad token
    gets ``pad_token = eos_token``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on ``device``.

    Raises:
        FileNotFoundError: ``path`` is not a local directory (hub names are refused).
        VocabMismatchError: the tokenizer is larger than the model's embedding.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"load_lm needs a local model directory, got {str(path)!r} which is not one; prefenv "
            "never downloads: save a model there with model.save_pretrained(dir) and "
            "tokenizer.save_pretrained(dir), or build the default with build_default_lm(dir)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    check_vocab(tokenizer, model)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
