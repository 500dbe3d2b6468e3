"""The parabola envelope of the exact distance transform as one Triton kernel per axis (CUDA).

For every line of a field ``f`` along one axis it computes ``g(i) = min_j f(j) + s² (i - j)²``
exactly, as the torch back-end's min-plus product does, but without materialising the
``lines x n x n`` intermediate: each program keeps a tile of ``BLOCK_L`` lines by ``n`` outputs in
registers and folds in one candidate ``j`` at a time. Lines are addressed in place through strides
(no transposed copy), and neighbouring lines are neighbouring in memory, so loads and stores are
coalesced. No host synchronisation is needed.

Needs the ``triton`` package (shipped with CUDA builds of torch). With ``TRITON_INTERPRET=1`` the
same kernel runs on CPU tensors through Triton's interpreter, which is how the tests check it on a
machine without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Registers per program: BLOCK_L lines x BLOCK_N outputs, float32.
_TILE_ELEMENTS = 4096


@triton.jit
def _envelope_kernel(f_ptr, out_ptr, n_lines, inner, outer_stride, axis_stride, n, step2,
                     BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    lines = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    valid = lines < n_lines
    base = (lines // inner) * outer_stride + lines % inner
    i = tl.arange(0, BLOCK_N)
    acc = tl.full((BLOCK_L, BLOCK_N), float("inf"), tl.float32)
    for j in range(0, n):
        fj = tl.load(f_ptr + base + j * axis_stride, mask=valid, other=float("inf"))
        d = (i - j).to(tl.float32)
        acc = tl.minimum(acc, fj[:, None] + (d * d * step2)[None, :])
    tl.store(out_ptr + base[:, None] + i[None, :] * axis_stride, acc, mask=valid[:, None] & (i[None, :] < n))


def parabola_envelope(f: torch.Tensor, dim: int, step: float) -> torch.Tensor:
    """``g(i) = min_j f(j) + step² (i - j)²`` along ``dim`` of a float32 tensor (``+inf`` allowed).

    Args:
        f: float32 tensor, any shape; squared distances (``+inf`` where no feature is known yet).
        dim: the axis of the lines.
        step: voxel size along ``dim``.

    Returns:
        A new float32 tensor of ``f``'s shape on ``f``'s device.
    """
    f = f.contiguous()
    shape = f.shape
    n = shape[dim]
    inner = math.prod(shape[dim + 1:])
    n_lines = math.prod(shape[:dim]) * inner
    out = torch.empty_like(f)
    if n_lines == 0:
        return out
    block_n = triton.next_power_of_2(n)
    block_l = max(1, min(128, _TILE_ELEMENTS // block_n))
    grid = (triton.cdiv(n_lines, block_l),)
    _envelope_kernel[grid](f, out, n_lines, inner, n * inner, inner, n, float(step) ** 2,
                           BLOCK_L=block_l, BLOCK_N=block_n)
    return out
