"""Device names shared by training and prediction: one syntax, one default order.

Every command accepts ``--device`` as ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. With no device
named, both training and prediction take the first available of ``cuda`` > ``mps`` > ``cpu``.
"""

from __future__ import annotations

import re

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
