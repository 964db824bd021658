"""LoRA adapters through ``peft`` (the ``lora`` extra): train adapters, keep one base model.

:func:`add_lora` wraps a Hugging Face causal LM in a ``peft`` :class:`~peft.PeftModel` whose
only trainable parameters are the low-rank adapters of the attention and MLP projections
(:data:`LORA_TARGETS`, chosen from ``model.config.model_type``). The KL reference of DPO and
GRPO is then not a second copy of the model: :class:`AdapterDisabled` runs the *same* modules
inside ``peft``'s ``disable_adapter()`` context, which is exactly the base model, and is handed
to :func:`agents.text.dpo.train_dpo` and :func:`agents.text.grpo.train_grpo` as their
``ref_model``; PPO-KL's token-level reference is :class:`AdapterDisabledPolicy`, the same for a
:class:`~agents.text.lm_policy.CausalLMPolicy`.

Adapters save in the ``peft`` format (:func:`save_lm`: ``adapter/adapter_config.json`` and
``adapter/adapter_model.safetensors``, next to the merged full model that every other stage
loads) and load back onto their base with :func:`load_adapters`.

Quick start::

    policy = add_lora(model, r=8, alpha=16.0)
    train_dpo(policy, AdapterDisabled(policy), tokenizer, pairs)
    save_lm(policy, tokenizer, "runs/dpo")  # merged model + runs/dpo/adapter/
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from agents.text.lm_policy import CausalLMPolicy, frozen_reference

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ADAPTER_DIR",
    "LORA_TARGETS",
    "AdapterDisabled",
    "AdapterDisabledPolicy",
    "add_lora",
    "check_lora_settings",
    "is_lora",
    "load_adapters",
    "lora_targets",
    "reference_of",
    "reference_policy_of",
    "save_lm",
    "with_lora",
]

ADAPTER_DIR = "adapter"
"""Sub-folder of a saved model that holds its LoRA adapters in the ``peft`` format."""

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
"""``model_type -> module names`` that get adapters: attention and MLP projections."""


def check_lora_settings(r: int, alpha: float, dropout: float) -> None:
    """Raise ``ValueError`` unless ``r >= 0`` (0: no LoRA), ``alpha > 0``, ``0 <= dropout < 1``."""
    if r < 0:
        raise ValueError(f"--lora-r must be >= 0 (0 turns LoRA off), got {r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"--lora-alpha must be a number > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {dropout}")


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The module names of ``model`` that get adapters, from its ``config.model_type``."""
    model_type = model.config.model_type
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no LoRA target modules known for model type {model_type!r}: known types are "
            f"{', '.join(sorted(LORA_TARGETS))}; add its projection names to "
            "agents.text.lora.LORA_TARGETS"
        )
    return LORA_TARGETS[model_type]


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (B = 0: outputs unchanged); only they train.

    Args:
        model: a Hugging Face causal LM; its own parameters are frozen in place.
        r: adapter rank (>= 1).
        alpha: scale numerator (updates are scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.

    Returns:
        The ``peft`` model. With a bfloat16 base, the adapters are float32 (peft's autocast).
    """
    from peft import LoraConfig, get_peft_model

    check_lora_settings(r, alpha, dropout)
    if r == 0:
        raise ValueError("add_lora needs r >= 1 (r = 0 means no LoRA: train the model itself)")
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(lora_targets(model)),
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores W transposed
    )  # fmt: skip
    return get_peft_model(model, config)


def with_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """``model`` with fresh adapters (:func:`add_lora`) when ``r >= 1``; ``model`` itself when
    ``r == 0`` (full fine-tuning: ``--lora-r 0``)."""
    return add_lora(model, r, alpha, dropout) if r else model


def reference_of(model: nn.Module) -> nn.Module | None:
    """The reference the trainers get: :class:`AdapterDisabled` for a LoRA model; None (the
    trainers' own frozen copy of the model) otherwise."""
    return AdapterDisabled(model) if is_lora(model) else None


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft`` model (trains adapters); False without ``peft``."""
    try:
        from peft import PeftModel
    except ImportError:  # no peft, so no peft model
        return False
    return isinstance(model, PeftModel)


class AdapterDisabled(nn.Module):
    """The base model under a LoRA policy: the same modules, run with the adapters disabled.

    A causal LM for the trainers' reference forwards (``model(input_ids=..., ...)``): no second
    copy of the weights. It shares the policy's parameters, so it must only be called without
    gradients (the trainers' reference passes are).

    Args:
        policy: the ``peft`` model (from :func:`add_lora`).
    """

    def __init__(self, policy: PeftModel) -> None:
        super().__init__()
        if not is_lora(policy):
            raise TypeError(
                f"AdapterDisabled needs a peft model (add_lora(model, ...)), got "
                f"{type(policy).__name__}: without adapters use a frozen copy as the reference"
            )
        self.policy = policy

    @property
    def config(self) -> Any:
        """The base model's config (context length, vocabulary)."""
        return self.policy.config

    def get_input_embeddings(self) -> nn.Module:
        """The shared input embedding."""
        return self.policy.get_input_embeddings()

    def forward(self, **inputs: Any) -> Any:
        """The base model's output on ``inputs`` (e.g. ``.logits`` ``[N, L, V]``)."""
        with self.policy.disable_adapter():
            return self.policy(**inputs)


class AdapterDisabledPolicy(CausalLMPolicy):
    """PPO-KL's reference under a LoRA policy: the policy's own LM with its adapters disabled.

    A :class:`~agents.text.lm_policy.CausalLMPolicy` whose forwards run inside ``peft``'s
    ``disable_adapter()``, so its log-probs are the base model's, with its own key/value cache.
    The LM is *not* a submodule: the reference owns no copy of the weights, ``PPOKL`` freezing it
    cannot freeze the policy's adapters, and its ``state_dict`` holds only its unused value head.

    Args:
        policy: the PPO-KL policy over a ``peft`` model (:func:`add_lora`).
    """

    def __init__(self, policy: CausalLMPolicy) -> None:
        if not is_lora(policy.model):
            raise TypeError(
                "AdapterDisabledPolicy needs a policy over a peft model (add_lora(model, ...)); "
                "without adapters use agents.text.lm_policy.frozen_reference(policy)"
            )
        super().__init__(policy.model, policy.action_dim, incremental_log_prob=True)
        shared = self._modules.pop("model")  # shared, not owned: see the class docstring
        object.__setattr__(self, "model", shared)

    def full_hidden(self, obs: Any) -> Any:
        with self.model.disable_adapter():
            return super().full_hidden(obs)

    def cached_hidden(self, obs: Any, which: str = "act") -> Any:
        with self.model.disable_adapter():
            return super().cached_hidden(obs, which)


def reference_policy_of(policy: CausalLMPolicy) -> CausalLMPolicy:
    """PPO-KL's reference for ``policy``: :class:`AdapterDisabledPolicy` under LoRA, else a
    frozen copy (:func:`~agents.text.lm_policy.frozen_reference`)."""
    return AdapterDisabledPolicy(policy) if is_lora(policy.model) else frozen_reference(policy)


def save_lm(model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """Save ``model`` and ``tokenizer`` into ``directory`` (created) as a full model.

    A LoRA model also saves its adapters in the ``peft`` format under ``directory/adapter``,
    then is merged into its base (in place: the base weights now include the update) and saved
    as the full model, which loads without ``peft``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if is_lora(model):
        model.save_pretrained(out / ADAPTER_DIR)
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_adapters(base: nn.Module, directory: str | Path, trainable: bool = False) -> PeftModel:
    """``base`` (the model the adapters were trained on) with the adapters of ``directory``.

    Args:
        base: the base causal LM, loaded from its own folder.
        directory: a folder written by ``save_pretrained`` of a ``peft`` model (holding
            ``adapter_config.json``), e.g. ``save_lm``'s ``directory/adapter``.
        trainable: load the adapters trainable (to continue training) instead of frozen.
    """
    from peft import PeftModel

    path = Path(directory)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no adapter_config.json: pass a folder written by a peft model's "
            f"save_pretrained (save_lm writes one to <model folder>/{ADAPTER_DIR})"
        )
    return PeftModel.from_pretrained(base, path, is_trainable=trainable)
