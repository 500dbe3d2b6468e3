"""The Triton back-end of the exact EDT: checked against scipy through Triton's CPU interpreter
(on CUDA: ``test_cuda_matches_scipy`` in test_distance.py).

The kernel is compiled for CUDA in real use; ``TRITON_INTERPRET=1`` runs the same kernel on CPU
tensors, which Triton decides when the kernel is defined, so the check runs in a fresh process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")

_CHECK = textwrap.dedent("""
    import numpy as np, torch
    from scipy import ndimage as ndi
    from hiennu.losses import euclidean_distance_transform, hausdorff_distance_field

    rng = np.random.default_rng(0)
    cases = [((2, 5, 9, 11), 0.5, None), ((2, 6, 40, 37), 0.02, (3.0, 0.5, 1.25)), ((1, 1, 13, 4), 0.8, (2.0, 1.0, 0.7)),
             ((2, 7, 1, 30), 0.9, None), ((1, 9, 20, 20), 0.98, (1.0, 1.0, 1.0))]
    for shape, density, spacing in cases:
        masks = rng.random(shape) < density
        masks.reshape(shape[0], -1)[:, 0] = False  # every sample holds a zero voxel
        for mask in (masks, ~masks):
            if mask.reshape(shape[0], -1).all(axis=1).any():
                continue
            out = euclidean_distance_transform(torch.from_numpy(mask), spacing, backend="triton")
            expected = np.stack([ndi.distance_transform_edt(m, sampling=spacing) for m in mask])
            np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, err_msg=str(shape))
        field = hausdorff_distance_field(torch.from_numpy(masks), spacing, backend="triton")
        native = hausdorff_distance_field(torch.from_numpy(masks), spacing, backend="native")
        np.testing.assert_allclose(field.numpy(), native.numpy(), rtol=1e-5, atol=1e-4)
    print("triton back-end matches scipy")
""")


def test_triton_kernel_matches_scipy_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matches scipy" in result.stdout


def test_triton_needs_cuda_outside_the_interpreter(monkeypatch):
    from hiennu.errors import HiennuError
    from hiennu.losses import euclidean_distance_transform

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(HiennuError, match="CUDA"):
        euclidean_distance_transform(torch.zeros(1, 2, 3, 4, dtype=torch.bool), backend="triton")

