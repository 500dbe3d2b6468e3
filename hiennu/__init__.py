"""hiennu: self-configuring segmentation of HIE lesions in neonatal diffusion MRI (ADC + ZADC).

The Python API for people who script around hiennu (imported on first use, so ``import hiennu``
stays light)::

    from hiennu import Predictor, evaluate_folders, case_metrics, TverskyHDTLoss
    predictor = Predictor.from_model_dir("hiennu_results/Dataset001_BONBID/TrainerTverskyHDT__hiennuPlans__3d_fullres")
    mask = predictor.predict_files("adc.mha", "zadc.mha")          # a SimpleITK image
    summary = evaluate_folders("labels/", "predictions/")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Predictor": "hiennu.inference.predictor",
    "ConfigurationEnsemble": "hiennu.inference.configuration_ensemble",
    "evaluate_folders": "hiennu.evaluation.evaluate",
    "case_metrics": "hiennu.evaluation.metrics",
    **{name: "hiennu.losses" for name in (
        "DiceLoss", "FocalLoss", "DiceFocalLoss", "TverskyLoss", "HausdorffDTLoss", "LogHausdorffDTLoss",
        "DiceFocalHDTLoss", "TverskyHDTLoss", "LOSSES")},
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hiennu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
