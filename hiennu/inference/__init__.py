"""hiennu.inference: predicting lesion masks in each input's native geometry.

``Predictor`` (trained models, folders or zips), ``ConfigurationEnsemble`` (two or more trained models,
say ``2d`` and ``3d_fullres``, their probabilities averaged; ``configuration_ensemble``), ``ZadcThresholdBaseline``
(ZADC < -2), input layouts (``layouts``), model zips (``model_zip``), model choice (``model_registry``) and the
challenge container interface (``challenge``). See documentation/inference.md.

May import: the ground floor, ``geometry`` (back to the native grid), ``preprocessing`` (the plans'
``preprocess_case``), ``networks`` and ``postprocessing`` (the record it applies). Never training or
evaluation.
"""

from hiennu.inference.baseline import ZadcThresholdBaseline
from hiennu.inference.configuration_ensemble import ConfigurationEnsemble
from hiennu.inference.folder_prediction import PredictionReport
from hiennu.inference.predictor import Predictor, build_predictor

__all__ = ["Predictor", "ConfigurationEnsemble", "ZadcThresholdBaseline", "PredictionReport", "build_predictor"]
