"""hiennu.postprocessing: what is done to a predicted mask, and choosing it by cross-validation.

- ``record``: :class:`PostProcessing` (the ``postprocessing.json`` record of a model folder), applying it,
  loading it, and :func:`with_size_rule`, the one home of the component-size rule (where the plans'
  ``min_component_voxels`` meets the record);
- ``components``: removing small 26-connected components, keeping those that touch a marker;
- ``candidates``: the fixed candidates and the ADC caps derived from the data;
- ``lesion_filter``: the logistic lesion filter fitted on cross-validation predictions;
- ``selection``: the pooled choice on the trained folds' validation masks and its nested estimate;
- ``commands``: what ``hiennu_determine_postprocessing`` and ``hiennu_apply_postprocessing`` run.

The record's walk from birth (``selection``) to use (the predictor, model zips) stays here and in
``inference``. May import: the ground floor and ``evaluation`` (the metrics of the candidate table).
Never inference, training or above.
"""

from hiennu.postprocessing.record import (POSTPROCESSING_FILE, PostProcessing, apply_postprocessing,
                                          load_postprocessing, with_size_rule)

__all__ = ["POSTPROCESSING_FILE", "PostProcessing", "apply_postprocessing", "load_postprocessing", "with_size_rule"]
