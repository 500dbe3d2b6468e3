"""The one device policy of training and prediction: which device, and how it runs there.

- Names: every command accepts ``--device`` as ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
  (:func:`parse_device`).
- Default order: with no device named, training and prediction both take the first available of
  ``cuda`` > ``mps`` > ``cpu`` (:func:`best_device_type`, :func:`resolve_device`; training's
  :func:`select_device` adds the GPU index of its data-parallel rank).
- Precision and layout: on CUDA the networks run under bfloat16 autocast (:func:`autocast`; weights,
  losses, sigmoid and averages stay float32) in ``channels_last_3d`` memory format
  (:func:`memory_format`); everywhere else in float32, contiguous (CPU runs stay deterministic), unless
  bfloat16 autocast is asked for on the CPU (``cpu_bf16``: the plans' ``training.cpu_bf16`` for
  training, ``hiennu_predict --cpu-bf16``). On a CPU with native bf16 (AVX512-BF16 or AMX) that is
  2.6x faster per training step of the CPU ``3d_fullres`` network (benchmarks.md); results are no
  longer bit-identical to float32.
- Global switches for training (:func:`configure_device`): cuDNN autotuning and TF32 on CUDA.

Ground floor: imports nothing of hiennu but its errors.
"""

from __future__ import annotations

import contextlib
import re
from typing import ContextManager

import torch

from hiennu.errors import HiennuError

DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when available, else mps, else cpu)"
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def parse_device(text: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``, ``"cpu"`` -> ``("cpu", None)``; anything else raises HiennuError."""
    m = _DEVICE_RE.match(str(text).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise HiennuError(f"unknown device {text!r}; use {', '.join(('cpu', 'cuda', 'cuda:N', 'mps'))}")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def best_device_type() -> str:
    """``cuda`` when a CUDA device is visible, else ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if mps_available() else "cpu"


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The torch device that ``device`` names (None: the best available), checked.

    ``local_rank`` (data-parallel training, one process per GPU) offsets the GPU index:
    ``cuda`` gives GPU ``local_rank``, ``cuda:N`` gives GPU ``N + local_rank``.
    """
    if isinstance(device, torch.device):
        device = str(device)
    kind, index = parse_device(device) if device is not None else (best_device_type(), None)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HiennuError(f"device {device!r} asked for, but PyTorch sees no CUDA device "
                              f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        gpu = (index or 0) + local_rank
        if gpu >= torch.cuda.device_count():
            raise HiennuError(f"device {device!r} needs GPU {gpu}, but only {torch.cuda.device_count()} "
                              f"GPU(s) are visible" + ("; lower --num-gpus" if local_rank else ""))
        return torch.device("cuda", gpu) if (index is not None or local_rank) else torch.device("cuda")
    if kind == "mps" and not mps_available():
        raise HiennuError("device 'mps' asked for, but MPS is not available; use --device cpu")
    return torch.device(kind)


def select_device(device_type: str | None = None, local_rank: int = 0) -> torch.device:
    """The device to train on; ``device_type`` None means the best available (``cuda`` > ``mps`` > ``cpu``).

    Accepts ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` (:func:`resolve_device`). On CUDA,
    ``local_rank`` picks the GPU (one process per GPU under DDP). Returns ``cuda:K`` on CUDA so
    that ``torch.cuda.set_device`` always has an index.
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


def configure_cpu_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (None keeps torch's default, one per core).

    On a 2-core box whose augmentation workers or other jobs share the cores, one intra-op thread can be
    faster than two: a two-thread region waits for its slower thread (``benchmarks/bench_cpu_step.py``).
    """
    if threads is not None:
        if int(threads) != threads or threads < 1:
            raise ValueError(f"CPU threads must be a positive whole number, got {threads}")
        torch.set_num_threads(int(threads))


def autocast(device: torch.device, cpu_bf16: bool = False) -> ContextManager:
    """bf16 autocast on CUDA, and on the CPU when ``cpu_bf16``; nothing elsewhere (float32).

    Under autocast convolutions run in bfloat16; weights, optimizer state, losses and sigmoids stay
    float32 (the callers cast the logits with ``.float()``).
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); else it is emulated, and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def memory_format(device: torch.device, network: torch.nn.Module | None = None) -> torch.memory_format:
    """The layout of a network's weights and of its ``(B, C, z, y, x)`` input: ``channels_last_3d`` for a 3D
    network on CUDA (faster cuDNN convolutions in bf16), contiguous elsewhere and for a 2D network (``2d``), whose
    rank-4 convolution weights cannot take a 3D layout and whose input is reshaped into slices inside it
    (on CUDA ``network.to(memory_format=channels_last_3d)`` raises for it)."""
    if device.type != "cuda":
        return torch.contiguous_format
    if network is not None and any(p.ndim == 4 for p in network.parameters()):
        return torch.contiguous_format
    return torch.channels_last_3d
