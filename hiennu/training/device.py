"""Choosing the compute device and setting it up for training.

``select_device`` picks ``cuda`` > ``mps`` > ``cpu`` by default and checks an explicit choice.
``autocast`` gives bf16 autocast on CUDA (the network's convolutions run in bf16, weights and the
loss stay float32) and a no-op elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from hiennu.errors import HiennuError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def best_device_type() -> str:
    """``cuda`` when a CUDA device is visible, else ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def select_device(device_type: str | None = None, local_rank: int = 0) -> torch.device:
    """The device to train on; ``device_type`` None means the best available.

    On CUDA, ``local_rank`` picks the GPU (one process per GPU under DDP).
    """
    kind = (device_type or best_device_type()).lower()
    if kind not in DEVICE_TYPES:
        raise HiennuError(f"unknown device {device_type!r}; choose one of {', '.join(DEVICE_TYPES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HiennuError("--device cuda was asked for but PyTorch sees no CUDA device "
                              f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        if local_rank >= torch.cuda.device_count():
            raise HiennuError(f"process {local_rank} needs GPU {local_rank} but only "
                              f"{torch.cuda.device_count()} are visible; lower --num-gpus")
        return torch.device("cuda", local_rank)
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HiennuError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(kind)


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
