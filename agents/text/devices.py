"""Where the text stages' models live and in which precision: ``--device`` and ``--dtype``.

:func:`resolve_device` turns ``auto``/``cpu``/``cuda`` into a :class:`torch.device` (``auto``:
the GPU when one is visible, else the CPU); :func:`resolve_dtype` turns ``float32``/``bfloat16``
into a :class:`torch.dtype` the device can compute in. :func:`placement` does both, in the form
``envs.text.load_lm(path, device, dtype)`` takes.

bfloat16 on the CPU is allowed (torch 2.x has bf16 matmuls there) but is slower than float32 on
most CPUs and is meant for trying out a GPU configuration on small models: a warning says so.
Training a model whose weights are bfloat16 rounds small updates away; with LoRA
(:mod:`agents.text.lora`) the adapters stay float32 while the frozen base is bfloat16.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["DEVICES", "DTYPES", "placement", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
"""Accepted ``--device`` names."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Accepted ``--dtype`` names and their torch dtypes."""


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``--device`` name.

    Args:
        name: ``auto`` (cuda if ``torch.cuda.is_available()``, else cpu), ``cpu`` or ``cuda``.

    Raises:
        ValueError: an unknown name, or ``cuda`` while no CUDA device is visible.
    """
    if name not in DEVICES:
        raise ValueError(f"unknown --device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: no CUDA device is visible (torch.cuda.is_available() is False): use "
            "--device cpu or auto"
        )
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name, checked against ``device``.

    Args:
        name: ``float32`` or ``bfloat16``.
        device: where the model will compute (from :func:`resolve_device`).

    Raises:
        ValueError: an unknown name, or ``bfloat16`` on a GPU without bf16 support.
    """
    if name not in DTYPES:
        raise ValueError(f"unknown --dtype {name!r}: choose one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--dtype bfloat16 on {torch.cuda.get_device_name(device)}: this GPU does not support "
            "bfloat16 (torch.cuda.is_bf16_supported() is False): use --dtype float32"
        )
    if dtype is torch.bfloat16 and device.type == "cpu":
        logger.warning(
            "--dtype bfloat16 on cpu: supported but usually slower than float32 on a CPU; it is "
            "meant for GPUs (use --dtype float32 for CPU runs)"
        )
    return dtype


def placement(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` of the ``--device`` and ``--dtype`` names (both checked)."""
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)
