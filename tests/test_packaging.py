"""Packaging promises: the C extension is optional, the Python API is importable from ``hiennu``,
and the set-up scripts say what they install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HIDE_EXTENSION = textwrap.dedent("""
    import importlib.abc, sys

    class HideEdt(importlib.abc.MetaPathFinder):
        # as if the C compiler was missing at install: the extension module cannot be found
        def find_spec(self, name, path=None, target=None):
            if name == "hiennu.losses._edt":
                raise ImportError("hidden by the test: no compiled extension")
            return None

    sys.meta_path.insert(0, HideEdt())
    import numpy as np, torch, scipy.ndimage
    import hiennu.losses.distance as distance
    from hiennu import HausdorffDTLoss, TverskyHDTLoss
    assert distance._edt is None
    assert distance.resolve_backend("auto", torch.device("cpu")) == "itk"
    mask = torch.zeros(1, 1, 6, 9, 8); mask[0, 0, 2:4, 3:6, 2:5] = 1
    got = distance.euclidean_distance_transform(mask[0, 0] > 0)
    want = scipy.ndimage.distance_transform_edt(mask[0, 0].numpy() > 0)
    assert np.allclose(got.numpy(), want, atol=1e-5)
    logits = torch.randn(1, 1, 6, 9, 8, requires_grad=True)
    loss = TverskyHDTLoss()(logits, mask) + HausdorffDTLoss()(logits, mask)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    try:
        distance.euclidean_distance_transform(mask[0, 0] > 0, backend="native")
    except Exception as e:
        assert "not compiled" in str(e)
    else:
        raise AssertionError("the native back-end ran without its extension")
    print("fallback ok")
""")


def test_package_works_with_the_c_extension_hidden():
    proc = subprocess.run([sys.executable, "-c", HIDE_EXTENSION], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fallback ok" in proc.stdout


def test_setup_declares_the_extension_optional_and_triton_outside_the_test_extra():
    text = (ROOT / "setup.py").read_text()
    assert "optional=True" in text
    extras = text[text.index("extras_require"):]
    test_extra = extras[extras.index('"test":'):].split("\n", 1)[0]
    assert "TRITON" not in test_extra and '"triton": [TRITON]' in extras
    assert "test,triton" in (ROOT / ".ci" / "run").read_text()


def test_setup_scripts_use_a_venv_and_keep_an_installed_torch():
    env = (ROOT / "scripts" / "_python.sh").read_text()
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "python3 -m venv" in env and "VIRTUAL_ENV" in env
    assert "import sys, torch" in install and "HIENNU_TORCH" in install and "torch==" not in install
    readme = (ROOT / "README.md").read_text()
    for word in (".venv", "HIENNU_TORCH=cuda", "HIENNU_TORCH", "triton"):
        assert word in readme, word
    assert "pinned so pip never pulls" not in readme


def test_python_api_is_exported():
    import hiennu
    from hiennu.evaluation.evaluate import evaluate_folders
    from hiennu.evaluation.metrics import case_metrics
    from hiennu.inference.predictor import Predictor
    from hiennu.losses import HausdorffDTLoss, TverskyHDTLoss
    assert hiennu.Predictor is Predictor and hiennu.evaluate_folders is evaluate_folders
    assert hiennu.case_metrics is case_metrics
    assert hiennu.TverskyHDTLoss is TverskyHDTLoss and hiennu.HausdorffDTLoss is HausdorffDTLoss
    assert set(hiennu.__all__) <= set(dir(hiennu))
    with pytest.raises(AttributeError):
        hiennu.NoSuchThing
