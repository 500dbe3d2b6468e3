"""Dataset fingerprint: what the planner needs to know about the training cases.

Per case: native geometry (size, spacing, origin, direction in SimpleITK (x, y, z) order; pixel
type), brain voxels (ADC != 0), the brain's bounding box (half-open, native voxels, z y x) and its
extent in mm, lesion voxels, lesion fraction of the brain, and the number of
26-connected lesion components. Per channel: intensity statistics inside the brain over a seeded
sample of at most ``samples_per_case`` brain voxels per case (mean, std, median, min, max and the
0.5 / 99.5 percentiles), for the dataset and for each case. Written to
``dataset_fingerprint.json`` in the preprocessed dataset folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from hiennu.errors import HiennuError
from hiennu.geometry.cropping import brain_bbox
from hiennu.io.atomic import read_json, write_json
from hiennu.io.cases import CaseFiles
from hiennu.io.image import Geometry, read_image
from hiennu.log import get_logger
from hiennu.io.channels import adc_zadc_channels, brain_channel
from hiennu.masks import FULL_CONNECTIVITY
from hiennu.parallel import parallel_map, register_preload

log = get_logger(__name__)
register_preload(__name__)  # its case functions run in worker processes

FINGERPRINT_FILE = "dataset_fingerprint.json"
DEFAULT_SAMPLES_PER_CASE = 10000
DEFAULT_SEED = 1234


@dataclass
class IntensityStats:
    """Statistics of one channel's values inside the brain (the channel's own units)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int

    @classmethod
    def of(cls, values: np.ndarray) -> "IntensityStats":
        if values.size == 0:
            return cls(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
        v = values.astype(np.float64)
        p = np.percentile(v, [0.5, 50.0, 99.5])
        return cls(float(v.mean()), float(v.std()), float(p[1]), float(v.min()), float(v.max()),
                   float(p[0]), float(p[2]), int(v.size))


@dataclass
class CaseFingerprint:
    """One training case: native geometry, brain and lesion sizes, per-channel statistics."""

    case_id: str
    geometry: dict
    brain_voxels: int
    lesion_voxels: int
    lesion_fraction: float
    lesion_components: int
    intensity: list[IntensityStats]
    brain_bbox_zyx: list[list[int]] | None = None

    @property
    def size_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.geometry["size_xyz"]))  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in reversed(self.geometry["spacing_xyz"]))  # type: ignore[return-value]

    @property
    def brain_box_zyx(self) -> tuple[int, int, int]:
        """Voxels of the brain box per axis (the whole volume when no box was recorded)."""
        if self.brain_bbox_zyx is None:
            return self.size_zyx
        return tuple(int(e - s) for s, e in self.brain_bbox_zyx)  # type: ignore[return-value]

    @property
    def brain_box_mm_zyx(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.brain_box_zyx, self.spacing_zyx))  # type: ignore[return-value]


@dataclass
class DatasetFingerprint:
    """The fingerprint of a dataset's training cases (see the module docstring)."""

    dataset_name: str
    channel_names: list[str]
    samples_per_case: int
    seed: int
    intensity: list[IntensityStats]
    cases: list[CaseFingerprint] = field(default_factory=list)

    @property
    def sizes_zyx(self) -> list[tuple[int, int, int]]:
        return [c.size_zyx for c in self.cases]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["intensity"] = {str(i): {"channel_name": n, **dataclasses.asdict(s)}
                          for i, (n, s) in enumerate(zip(self.channel_names, self.intensity))}
        sizes = np.array([c.geometry["size_xyz"] for c in self.cases])
        spacings = np.array([c.geometry["spacing_xyz"] for c in self.cases])
        boxes_mm = np.array([c.brain_box_mm_zyx for c in self.cases])
        spacings_zyx = spacings[:, ::-1]
        d["summary"] = {"num_cases": len(self.cases),
                        "spacing_zyx_median": np.median(spacings_zyx, 0).tolist(),
                        "spacing_zyx_min": spacings_zyx.min(0).tolist(),
                        "spacing_zyx_max": spacings_zyx.max(0).tolist(),
                        "spacing_zyx_percentile_10": np.percentile(spacings_zyx, 10, axis=0).tolist(),
                        "brain_box_mm_zyx_median": np.median(boxes_mm, 0).tolist(),
                        "brain_box_mm_zyx_max": boxes_mm.max(0).tolist(),
                        "size_xyz_mean": sizes.mean(0).tolist(), "size_xyz_min": sizes.min(0).tolist(),
                        "size_xyz_max": sizes.max(0).tolist(),
                        "spacing_xyz_median": np.median(spacings, 0).tolist(),
                        "cases_without_lesion": sum(c.lesion_voxels == 0 for c in self.cases),
                        "lesion_fraction_median": float(np.median([c.lesion_fraction for c in self.cases]))}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetFingerprint":
        intensity = [IntensityStats(**{k: v for k, v in d["intensity"][str(i)].items() if k != "channel_name"})
                     for i in range(len(d["channel_names"]))]
        cases = [CaseFingerprint(**{**c, "intensity": [IntensityStats(**s) for s in c["intensity"]]})
                 for c in d["cases"]]
        return cls(d["dataset_name"], list(d["channel_names"]), int(d["samples_per_case"]), int(d["seed"]),
                   intensity, cases)


def fingerprint_case(case: CaseFiles, index: int, samples_per_case: int, seed: int, brain_index: int = 0
                     ) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """Fingerprint one case; also returns the sampled brain values of each channel. ``brain_index``: the
    channel whose non-zero voxels are the brain (:func:`hiennu.io.channels.brain_channel`)."""
    arrays = []
    geometry: Geometry | None = None
    for path in case.image_files:
        array, geo = read_image(path)
        arrays.append(array)
        geometry = geometry or geo
    assert geometry is not None
    brain = arrays[brain_index] != 0
    lesion = np.zeros(brain.shape, bool)
    components = 0
    if case.label_file is not None:
        label, _ = read_image(case.label_file, dtype=np.uint8)
        lesion = label > 0
        _, components = ndimage.label(lesion, structure=FULL_CONNECTIVITY)
    rng = np.random.default_rng([seed, index])
    brain_idx = np.flatnonzero(brain)
    if brain_idx.size > samples_per_case:
        brain_idx = rng.choice(brain_idx, samples_per_case, replace=False)
    samples = [a.ravel()[brain_idx] for a in arrays]
    brain_voxels = int(brain.sum())
    lesion_voxels = int(lesion.sum())
    fp = CaseFingerprint(case.case_id, geometry.to_dict(), brain_voxels, lesion_voxels,
                         lesion_voxels / brain_voxels if brain_voxels else 0.0, int(components),
                         [IntensityStats.of(s) for s in samples], brain_bbox(arrays[brain_index]))
    return fp, samples


def compute_fingerprint(cases: list[CaseFiles], dataset_name: str, channel_names: list[str],
                        num_processes: int = 2, samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
                        seed: int = DEFAULT_SEED) -> DatasetFingerprint:
    """Fingerprint the given training cases (every channel file present; labels optional)."""
    if not cases:
        raise HiennuError(f"dataset {dataset_name}: no training cases to fingerprint (imagesTr is empty)")
    jobs = [(c, i, samples_per_case, seed, brain_channel(channel_names)) for i, c in enumerate(cases)]
    results = parallel_map(fingerprint_case, jobs, num_processes, desc="fingerprint")
    pooled = [np.concatenate([r[1][ch] for r in results]) for ch in range(len(channel_names))]
    fp = DatasetFingerprint(dataset_name, list(channel_names), samples_per_case, seed,
                            [IntensityStats.of(v) for v in pooled], [r[0] for r in results])
    log.info("fingerprint: %d cases; %s", len(cases), "; ".join(
        f"{n} brain mean {s.mean:.4g} std {s.std:.4g} [0.5%, 99.5%] = [{s.percentile_00_5:.4g}, {s.percentile_99_5:.4g}]"
        for n, s in zip(channel_names, fp.intensity)))
    problem = channel_scale_problem(channel_names, fp.intensity)
    if problem:
        raise HiennuError(f"dataset {dataset_name}: {problem}")
    return fp


#: brain medians that an ADC map in 10^-6 mm^2/s (BONBID's unit; neonatal brain about 800-2000) and a z-score map
#: cannot have: the planner's normalization, the rule ZADC < -2 and the post-processing's ADC caps rely on both
ADC_MEDIAN_RANGE = (100.0, 10000.0)
ZADC_MAX_ABS_MEDIAN = 5.0


def channel_scale_problem(channel_names: list[str], intensity: list[IntensityStats]) -> str | None:
    """Why the brain values contradict the channels' names (ADC in 10^-6 mm^2/s, ZADC a z-score), or None.

    Hand-written because nothing else would notice: swapped ``channel_names`` in ``dataset.json`` (the ADC read as
    the z-map) or an ADC in mm^2/s plan and train without an error, with a rule prior that never fires and ADC
    caps that keep everything.
    """
    adc, zadc = adc_zadc_channels(channel_names)
    adc_median = intensity[adc].median if adc is not None and intensity[adc].num_samples else None
    zadc_median = intensity[zadc].median if zadc is not None and intensity[zadc].num_samples else None
    adc_off = adc_median is not None and not ADC_MEDIAN_RANGE[0] <= adc_median <= ADC_MEDIAN_RANGE[1]
    zadc_off = zadc_median is not None and abs(zadc_median) > ZADC_MAX_ABS_MEDIAN
    medians = (f"the brain median of channel {adc} ({channel_names[adc]}) is {adc_median:.4g}" if adc_off else None,
               f"the brain median of channel {zadc} ({channel_names[zadc]}) is {zadc_median:.4g}" if zadc_off else None)
    said = " and ".join(m for m in medians if m)
    if adc_off and zadc_off:
        return (f"{said}: the two look swapped; fix channel_names in dataset.json so that each file number names its "
                f"map (an ADC in 10^-6 mm^2/s, brain median about 800-2000; a ZADC z-score map, median near 0)")
    if adc_off:
        return (f"{said}, outside {ADC_MEDIAN_RANGE[0]:g}-{ADC_MEDIAN_RANGE[1]:g}: an ADC map is expected in "
                f"10^-6 mm^2/s (neonatal brain about 800-2000; multiply a map in mm^2/s by 10^6), or the channel is "
                f"not the ADC: check channel_names in dataset.json")
    if zadc_off:
        return (f"{said}, beyond +-{ZADC_MAX_ABS_MEDIAN:g}: a ZADC map is a z-score against an atlas (median near 0), "
                f"or the channel is not the ZADC: check channel_names in dataset.json")
    return None


def save_fingerprint(fp: DatasetFingerprint, path: str | os.PathLike) -> None:
    write_json(fp.to_dict(), path)


def load_fingerprint(path: str | os.PathLike) -> DatasetFingerprint:
    path = Path(path)
    if not path.is_file():
        raise HiennuError(f"{path}: fingerprint not found; run hiennu_plan_and_preprocess")
    try:
        return DatasetFingerprint.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as e:
        raise HiennuError(f"{path}: cannot be read as a dataset fingerprint ({e}); delete it and re-run "
                          f"hiennu_plan_and_preprocess") from None
