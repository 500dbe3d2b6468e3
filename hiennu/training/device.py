"""Choosing the compute device and setting it up for training.

``select_device`` picks ``cuda`` > ``mps`` > ``cpu`` by default (the order prediction uses too,
:mod:`hiennu.device`) and checks an explicit choice.
``autocast`` gives bf16 autocast on CUDA (the network's convolutions run in bf16, weights and the
loss stay float32) and a no-op elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from hiennu.device import resolve_device


def select_device(device_type: str | None = None, local_rank: int = 0) -> torch.device:
    """The device to train on; ``device_type`` None means the best available (``cuda`` > ``mps`` > ``cpu``).

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` (:func:`hiennu.device.resolve_device`). On
    CUDA, ``local_rank`` picks the GPU (one process per GPU under DDP). Returns ``cuda:K`` on CUDA
    so that ``torch.cuda.set_device`` always has an index.
    """
    device = resolve_device(device_type, local_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def configure_device(device: torch.device) -> None:
    """Global switches for fast training on ``device`` (cuDNN autotuning and TF32 on CUDA)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; nothing elsewhere (CPU runs stay float32 and deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last_3d`` on CUDA (faster cuDNN convolutions in bf16), contiguous elsewhere."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
