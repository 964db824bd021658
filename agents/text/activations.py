"""GPT-2's ``gelu_new`` activation, swapped for torch's fused kernel of the same function.

Hugging Face writes ``gelu_new`` (GPT-2, GPT-J, CodeGen, ...) as ``NewGELUActivation``: five
Python-level tensor operations, each a kernel launch and, in training, a saved tensor for the
backward pass. ``torch.nn.functional.gelu(x, approximate="tanh")`` computes the same formula,
``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``, in one kernel (Hugging Face ships it as
the ``gelu_pytorch_tanh`` activation). In float32 the two differ by at most 5e-7 on inputs in
[-16, 16] (tested). On the tiny default GPT-2 DPO trains 89 pairs/s with the swap against 74
without (``benchmarks/bench_dpo_speed.py``, benchmarks/RESULTS.md "Text speed after per-group
prompt sharing and the fused GELU"); GRPO's throughput moved by less than its run-to-run spread.

The text training loops (:func:`~agents.text.sft.train_text_sft`,
:func:`~agents.text.dpo.train_dpo`, :func:`~agents.text.grpo.train_grpo`, the PPO-KL policy
:class:`~agents.text.lm_policy.CausalLMPolicy`) call :func:`fuse_activations` on the models
they are given. It changes modules, not weights or the config: ``save_pretrained`` writes the
same files, and the saved model loads with ``gelu_new`` again. ``PREFENV_FUSED_ACTIVATIONS=0``
in the environment turns the swap off (the benchmarks use it to show what the swap is worth).
"""

from __future__ import annotations

import os

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FusedGELUTanh", "fuse_activations"]

_SWAPPED = ("NewGELUActivation",)
"""Class names of the Hugging Face activations computing GELU's tanh form in Python ops."""


class FusedGELUTanh(nn.Module):
    """``gelu_new``/``gelu_pytorch_tanh``: GELU's tanh approximation, torch's fused kernel."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module | None) -> int:
    """Replace every ``NewGELUActivation`` in ``model`` with :class:`FusedGELUTanh`, in place.

    Args:
        model: any module (a Hugging Face causal LM, a ``peft`` model, a policy); None is
            allowed (no reference model) and changes nothing.

    Returns:
        How many modules were replaced (0 if the model has none, or with
        ``PREFENV_FUSED_ACTIVATIONS=0`` set).
    """
    if model is None or os.environ.get("PREFENV_FUSED_ACTIVATIONS", "1") == "0":
        return 0
    targets = [(name, module) for name, module in model.named_modules()
               if name and type(module).__name__ in _SWAPPED]  # fmt: skip
    for name, _ in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, FusedGELUTanh())
    return len(targets)
