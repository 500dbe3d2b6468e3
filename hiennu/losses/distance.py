"""Exact Euclidean distance transform of binary masks, batched, on the mask's device.

For every non-zero voxel the transform gives the distance to the nearest zero voxel (the semantics
of ``scipy.ndimage.distance_transform_edt``); zero voxels get 0. Distances are in voxels, or in the
units of ``spacing`` when it is given (``spacing`` is in numpy order ``(z, y, x)``).

Conventions for the two degenerate masks:

- an empty mask (no non-zero voxel) has the all-zero transform (as in scipy);
- a mask without any zero voxel has no distance to measure; its transform is ``+inf`` everywhere
  (scipy returns arbitrary numbers there). Callers that need a finite field, such as the
  Hausdorff field :func:`hiennu.losses.hausdorff.hausdorff_distance_field`, treat full masks
  explicitly.

Three exact back-ends compute the same numbers:

``"native"``
    The separable linear-time algorithm of Felzenszwalb & Huttenlocher in C (``hiennu/losses/_edt.c``,
    compiled when the package is installed): two scans along x, then along y and along z the lower
    envelope of parabolas on blocks of 32 lines copied together, or a windowed minimum where the
    plane's values bound the optimum within 32 voxels. Object masks are cropped to
    their bounding box grown by one voxel (the nearest zero voxel of a voxel inside that box always
    lies in it). The C code releases the GIL, so the volumes of a batch are spread over
    ``torch.get_num_threads()`` threads. The fastest choice on CPU.
``"torch"``
    The same separable algorithm in tensor ops: the 1D distance to the nearest zero along x from two
    cumulative scans, then along y and along z the lower envelope
    ``g(i) = min_j f(j) + s² (i - j)²`` evaluated as a min-plus product of every line with the
    parabola matrix, in chunks of lines. It runs on any device; on CUDA it is one kernel per chunk
    and axis. Work is ``O(N · (n_y + n_z))`` for ``N`` voxels, which suits GPUs.
``"triton"``
    The torch back-end with its two envelopes replaced by one Triton kernel per axis
    (:mod:`hiennu.losses.distance_triton`): the same exact min-plus product, computed in registers
    without the chunked intermediate and without host synchronisation. CUDA only (and CPU tensors
    under ``TRITON_INTERPRET=1``, for tests); needs the ``triton`` package.
``"itk"``
    SimpleITK's Maurer transform (linear-time, exact, multi-threaded C++), one call per volume,
    cropped like ``"native"``. Kept as the CPU fall-back when the C extension is not built (a source
    checkout used without ``pip install -e .``).

``"auto"`` picks ``"triton"`` on CUDA (``"torch"`` without Triton), and on CPU ``"native"``
(``"itk"`` if the extension is missing). documentation/benchmarks.md has the measurements behind that choice.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from hiennu.errors import HiennuError

try:
    from hiennu.losses import _edt
except ImportError:  # a source checkout without the compiled extension
    _edt = None

BACKENDS = ("auto", "native", "torch", "triton", "itk")

# Elements (lines x n x n) of one min-plus chunk in the torch back-end: 2**24 float32 = 64 MiB.
_CHUNK_ELEMENTS = 1 << 24


def euclidean_distance_transform(mask: torch.Tensor, spacing: Sequence[float] | None = None,
                                 backend: str = "auto") -> torch.Tensor:
    """Distance of each non-zero voxel of ``mask`` to the nearest zero voxel, float32.

    Args:
        mask: ``(B, z, y, x)`` or ``(z, y, x)`` tensor, bool or numeric (non-zero = object); each
            batch item is transformed on its own.
        spacing: voxel size ``(z, y, x)`` (e.g. mm); ``None`` measures in voxels.
        backend: ``"auto"``, ``"native"``, ``"torch"``, ``"triton"`` or ``"itk"`` (see the module
            docstring).

    Returns:
        float32 tensor of the mask's shape on the mask's device. ``+inf`` in a batch item without
        zero voxels.
    """
    return squared_euclidean_distance_transform(mask, spacing, backend).sqrt_()


def squared_euclidean_distance_transform(mask: torch.Tensor, spacing: Sequence[float] | None = None,
                                         backend: str = "auto") -> torch.Tensor:
    """The square of :func:`euclidean_distance_transform` (cheaper; what the Hausdorff loss needs)."""
    mask, squeeze = _check_mask(mask)
    spacing_zyx = check_spacing(spacing)
    requested, backend = backend, resolve_backend(backend, mask.device)
    if backend == "torch":
        out = _squared_edt_torch(mask, spacing_zyx)
    elif backend == "triton":
        out = _squared_edt_triton(mask, spacing_zyx, fall_back=requested == "auto")
    elif backend == "native":
        out = _squared_edt_native(mask, spacing_zyx)
    else:
        out = _squared_edt_itk(mask, spacing_zyx)
    return out[0] if squeeze else out


def _check_mask(mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(mask, torch.Tensor):
        raise HiennuError(f"euclidean_distance_transform: the mask must be a torch.Tensor, got "
                          f"{type(mask).__name__}; convert it with torch.as_tensor(mask)")
    if mask.dim() not in (3, 4):
        raise HiennuError(f"euclidean_distance_transform: the mask must be (z, y, x) or (B, z, y, x), got "
                          f"shape {tuple(mask.shape)}; squeeze the channel axis of (B, 1, z, y, x) masks")
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise HiennuError("euclidean_distance_transform: the mask contains NaN or Inf; pass a binary mask")
    mask = mask != 0
    if mask.dim() == 3:
        return mask[None], True
    return mask, False


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    """``spacing`` as three positive floats ``(z, y, x)`` (``None``: voxels, ``(1, 1, 1)``); else raises."""
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise HiennuError(f"euclidean_distance_transform: spacing must be three positive finite numbers "
                          f"in (z, y, x) order, got {spacing!r}")
    return values  # type: ignore[return-value]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The back-end that ``backend`` means for a tensor on ``device`` (``"auto"`` resolved, the choice
    checked; see the module docstring); raises :class:`HiennuError` when it cannot run there."""
    if backend not in BACKENDS:
        raise HiennuError(f"euclidean_distance_transform: unknown backend {backend!r}; "
                          f"choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if _triton_module() is not None and _TRITON_FAILURE is None else "torch"
        return "native" if _edt is not None else "itk"
    if backend == "native" and _edt is None:
        raise HiennuError("euclidean_distance_transform: the 'native' back-end is not compiled; reinstall "
                          "hiennu with `pip install -e .` (needs a C compiler) or pick backend='itk'")
    if backend == "triton":
        if _triton_module() is None:
            raise HiennuError("euclidean_distance_transform: the 'triton' back-end needs the triton package "
                              "(part of CUDA builds of torch); pick backend='torch'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise HiennuError(f"euclidean_distance_transform: the 'triton' back-end runs on CUDA tensors, got "
                              f"a {device.type} tensor; pick backend='native' on CPU")
    return backend


# Set when the Triton kernel failed under backend="auto"; "auto" then uses the torch back-end.
_TRITON_FAILURE: Exception | None = None


def _squared_edt_triton(mask: torch.Tensor, spacing_zyx: tuple[float, float, float], fall_back: bool) -> torch.Tensor:
    """The torch back-end with Triton envelopes; with ``fall_back``, a kernel that fails to compile or
    run on this machine is reported once and replaced by the tensor-op envelopes (same numbers)."""
    global _TRITON_FAILURE
    try:
        return _squared_edt_torch(mask, spacing_zyx, envelope=_triton_module().parabola_envelope)
    except Exception as error:  # Triton raises compiler, resource and driver errors of many types
        if not fall_back:
            raise
        _TRITON_FAILURE = error
        warnings.warn(f"hiennu: the Triton distance-transform kernel failed on this machine "
                      f"({type(error).__name__}: {error}); using the torch back-end from now on", RuntimeWarning)
        return _squared_edt_torch(mask, spacing_zyx)


@functools.lru_cache(maxsize=1)
def _triton_module():
    """:mod:`hiennu.losses.distance_triton`, or ``None`` where Triton is missing or unusable."""
    try:
        return importlib.import_module("hiennu.losses.distance_triton")
    except Exception:  # ImportError, or a Triton that fails to initialise on this machine
        return None


def squared_distance_to_other_class(masks: Sequence[torch.Tensor],
                                    spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Sum over ``masks`` of each voxel's squared distance to the nearest voxel of the other class (native back-end).

    For one mask that is the squared transform of the object plus that of the background (exactly
    one is non-zero at each voxel), computed in one pass by the C extension, one thread per volume,
    with no intermediate volume; a volume whose mask is empty or full contributes zero.

    Args:
        masks: ``(B, z, y, x)`` tensors of one shape, bool or numeric (non-zero = object).
        spacing: voxel size ``(z, y, x)``; ``None`` measures in voxels.

    Returns:
        float32 ``(B, z, y, x)`` on the device of ``masks[0]``. Raises :class:`HiennuError` when the
        C extension is not compiled (check with :func:`native_available`).
    """
    spacing_zyx = check_spacing(spacing)
    resolve_backend("native", torch.device("cpu"))
    hosts = [np.ascontiguousarray(_check_mask(m)[0].detach().cpu().numpy()) for m in masks]
    out = torch.empty(hosts[0].shape, dtype=torch.float32)
    out_np = out.numpy()

    def sample(b: int) -> None:
        for k, host in enumerate(hosts):
            _edt.hausdorff_field(host[b], out_np[b], spacing_zyx, k > 0)

    for_each_volume(sample, out.shape[0])
    return out.to(masks[0].device)


def native_available() -> bool:
    """Whether the C back-end (``hiennu.losses._edt``) is compiled and importable."""
    return _edt is not None


def for_each_volume(work: Callable[[int], object], count: int) -> None:
    """Run ``work(b)`` for ``b < count``, on up to ``torch.get_num_threads()`` threads.

    Meant for C code that releases the GIL; a fresh pool per call leaves no thread behind (safe
    with forked data-loader workers).
    """
    threads = min(count, torch.get_num_threads())
    if threads <= 1:
        for b in range(count):
            work(b)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(count)))


# ---------------------------------------------------------------------------------------------
# torch back-end
# ---------------------------------------------------------------------------------------------

def _squared_edt_torch(mask: torch.Tensor, spacing_zyx: tuple[float, float, float],
                       envelope: Callable[[torch.Tensor, int, float], torch.Tensor] | None = None) -> torch.Tensor:
    """Separable exact squared EDT of a (B, z, y, x) bool mask, in tensor ops on its device.

    ``envelope(f, dim, step)`` computes the lower envelope along one axis (default: the chunked
    min-plus product in tensor ops; the Triton back-end passes its kernel).
    """
    envelope = envelope or _parabola_envelope
    f = _squared_line_distance_x(mask, spacing_zyx[2])
    f = envelope(f, 2, spacing_zyx[1])
    f = envelope(f, 1, spacing_zyx[0])
    return f


def _squared_line_distance_x(mask: torch.Tensor, step: float) -> torch.Tensor:
    """Squared distance along x (last axis) to the nearest zero voxel of the same line; inf if none."""
    n = mask.shape[-1]
    idx = torch.arange(n, device=mask.device, dtype=torch.float32).expand(mask.shape)
    zero = ~mask
    far = float(2 * n + 1)
    previous = torch.where(zero, idx, -far).cummax(dim=-1).values
    following = torch.where(zero, idx, far).flip(-1).cummin(dim=-1).values.flip(-1)
    d = torch.minimum(idx - previous, following - idx)
    out = (d * step).square_()
    return out.masked_fill_(d > n, float("inf"))


def _parabola_envelope(f: torch.Tensor, dim: int, step: float) -> torch.Tensor:
    """``g(i) = min_j f(j) + step² (i - j)²`` along ``dim`` for every line (exact min-plus product).

    ``f`` bounds the result from above, so no optimal ``j`` lies further than
    ``sqrt(max f) / step`` from ``i``; when that window is short (dense masks) the product is
    taken over the window by shifting, otherwise over whole lines in chunks.
    """
    n = f.shape[dim]
    if n == 1:
        return f
    largest = float(f.max())
    reach = n - 1 if not np.isfinite(largest) else min(n - 1, int(np.sqrt(largest) / step))
    if 4 * reach < n:
        return _envelope_by_shifts(f, dim, step, reach)
    moved = f.movedim(dim, -1)
    shape = moved.shape
    lines = moved.reshape(-1, n)
    # Only positions where some line is finite can be an optimum: a small object's background
    # transform has few of them (its extent), which shrinks the product to n x extent per line.
    finite = torch.isfinite(lines).any(dim=0).nonzero()
    if finite.numel() == 0:
        return f
    first, last = int(finite[0]), int(finite[-1]) + 1
    pos = torch.arange(n, device=f.device, dtype=torch.float32)
    parabola = ((pos[:, None] - pos[None, first:last]) * step).square_()  # (i, j)
    candidates = lines[:, first:last]
    out = torch.empty_like(lines)
    rows = max(1, _CHUNK_ELEMENTS // (n * (last - first)))
    for start in range(0, lines.shape[0], rows):
        block = candidates[start:start + rows]
        out[start:start + rows] = (block[:, None, :] + parabola).amin(dim=-1)
    return out.reshape(shape).movedim(-1, dim)


def _envelope_by_shifts(f: torch.Tensor, dim: int, step: float, reach: int) -> torch.Tensor:
    """The envelope restricted to ``|i - j| <= reach`` (exact when ``reach`` bounds the optimum)."""
    g = f.clone()
    n = f.shape[dim]
    for d in range(1, reach + 1):
        cost = (d * step) ** 2
        ahead, behind = g.narrow(dim, d, n - d), g.narrow(dim, 0, n - d)
        torch.minimum(ahead, f.narrow(dim, 0, n - d) + cost, out=ahead)
        torch.minimum(behind, f.narrow(dim, d, n - d) + cost, out=behind)
    return g


# ---------------------------------------------------------------------------------------------
# native back-end (C, CPU)
# ---------------------------------------------------------------------------------------------

def _squared_edt_native(mask: torch.Tensor, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
    """Exact squared EDT of each (z, y, x) volume with the C extension, volumes on parallel threads."""
    masks = np.ascontiguousarray(mask.detach().cpu().numpy())
    out = torch.empty(masks.shape, dtype=torch.float32)
    out_np = out.numpy()
    for_each_volume(lambda b: _edt.squared_edt(masks[b], out_np[b], spacing_zyx), len(masks))
    return out.to(mask.device)


# ---------------------------------------------------------------------------------------------
# SimpleITK back-end (CPU)
# ---------------------------------------------------------------------------------------------

def _squared_edt_itk(mask: torch.Tensor, spacing_zyx: tuple[float, float, float]) -> torch.Tensor:
    """Exact squared EDT of each (z, y, x) volume with ITK's Maurer transform, cropped to the object."""
    masks = mask.detach().cpu().numpy()
    out = np.zeros(masks.shape, dtype=np.float32)
    for b, volume in enumerate(masks):
        _itk_volume(volume, spacing_zyx, out[b])
    return torch.from_numpy(out).to(mask.device)


def _itk_volume(volume: np.ndarray, spacing_zyx: tuple[float, float, float], out: np.ndarray) -> None:
    """Write the squared EDT of one bool (z, y, x) volume into ``out`` (which holds zeros)."""
    coords = np.nonzero(volume.any(axis=(1, 2))), np.nonzero(volume.any(axis=(0, 2))), \
        np.nonzero(volume.any(axis=(0, 1)))
    if coords[0][0].size == 0:
        return
    box = tuple(slice(max(int(c[0][0]) - 1, 0), min(int(c[0][-1]) + 2, n))
                for c, n in zip(coords, volume.shape))
    crop = volume[box]
    if crop.all():  # the grown box holds a zero unless it is the whole volume
        out[...] = np.inf
        return
    zeros_image = sitk.GetImageFromArray((~crop).astype(np.uint8))
    zeros_image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    distance = sitk.SignedMaurerDistanceMap(zeros_image, insideIsPositive=False, squaredDistance=True,
                                            useImageSpacing=True, backgroundValue=0)
    out[box] = np.where(crop, sitk.GetArrayViewFromImage(distance), np.float32(0))
