"""The BONBID-HIE challenge container interface, end to end.

Input (one case): ``INPUT/images/skull-stripped-adc-brain-mri/<name>.mha`` (ADC) and
``INPUT/images/z-score-adc/<name>.mha`` (ZADC). Output:
``OUTPUT/images/hie-lesion-segmentation/overlay.mha``, a uint8 {0, 1} mask with the ADC image's
size, spacing, origin and direction, written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import CasePredictor, check_output_folder
from hiennu.inference.layouts import CHALLENGE_ADC_DIR, CHALLENGE_ZADC_DIR, discover_input_cases, read_case
from hiennu.io.image import Geometry, image_ending, write_image
from hiennu.log import get_logger

logger = get_logger(__name__)

CHALLENGE_OUTPUT = Path("images") / "hie-lesion-segmentation" / "overlay.mha"


def run_challenge(predictor: CasePredictor, input_dir: str | Path = "/input",
                  output_dir: str | Path = "/output") -> Path:
    """Predict the one challenge case under ``input_dir`` and write ``output_dir/images/hie-lesion-segmentation/overlay.mha``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_output_folder(input_dir, output_dir)
    if not (input_dir / CHALLENGE_ADC_DIR).is_dir() or not (input_dir / CHALLENGE_ZADC_DIR).is_dir():
        raise HiennuError(f"{input_dir}: the challenge layout needs {CHALLENGE_ADC_DIR}/ and {CHALLENGE_ZADC_DIR}/ "
                          f"(one .mha each)")
    cases = [c for c in discover_input_cases(input_dir, predictor.channel_names) if c.layout == "challenge"]
    if len(cases) != 1:
        counts = [sum(1 for p in (input_dir / d).iterdir() if image_ending(p) and not p.name.startswith("."))
                  for d in (CHALLENGE_ADC_DIR, CHALLENGE_ZADC_DIR)]
        raise HiennuError(f"{input_dir}: the challenge interface takes exactly one case, one image in each of "
                          f"{CHALLENGE_ADC_DIR}/ and {CHALLENGE_ZADC_DIR}/; found {counts[0]} and {counts[1]} "
                          f"({', '.join(c.case_id for c in cases) or 'none'}); keep one case's pair")
    images, geometry = read_case(cases[0])
    mask, _ = predictor.predict_case(images, geometry)
    out = output_dir / CHALLENGE_OUTPUT
    geometry_out = Geometry(geometry.size_xyz, geometry.spacing_xyz, geometry.origin_xyz, geometry.direction,
                            "8-bit unsigned integer")
    write_image(mask.astype(np.uint8, copy=False), geometry_out, out)
    logger.info("case %s: %d lesion voxels -> %s", cases[0].case_id, int(mask.sum()), out)
    return out
