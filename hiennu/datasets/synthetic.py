"""The embedded default dataset: BONBID-like ADC + ZADC maps and lesion masks, made from nothing.

Per case (all random draws from ``numpy.random.default_rng([seed, case_index])``, so a case depends
only on the seed and its index):

* **Grid.** Square in-plane size and slice count from the preset, spacing chosen so the field of
  view holds a neonatal head (about 160-250 mm in-plane, 90-120 mm through-plane), an origin near
  the grid centre and, in most cases, an oblique direction (rotation up to about 12 degrees).
* **Anatomy** (mm, in a head frame tilted against the grid): an ellipsoidal brain with a
  bumpy surface, cortical grey-matter shell, extra-axial CSF rim, white matter, deep grey matter
  (basal ganglia/thalami), lateral ventricles, interhemispheric fissure, and in some cases
  maturing (myelinating) white-matter tracts whose ADC is normally low.
* **ADC** (10^-6 mm^2/s): tissue means x a subject factor x a smooth bias field, partial-volume
  blur, Rician-like noise; a noisy skull-stripping rim with some near-zero and negative values;
  background exactly 0 and every brain voxel non-zero (the brain mask is ``ADC != 0``).
* **Lesions** (label 1): the top voxels of a smooth random field, weighted by an HIE pattern
  (basal ganglia/thalami, watershed cortex/white matter, or diffuse), so the lesion volume hits a
  drawn fraction of the brain: none, tiny multifocal (<1%), moderate, large, or massive (>50%).
  The ADC drops by a case severity that is strongest in the lesion core, so lesion rims can keep
  ZADC above -2.
* **ZADC**: a voxel-wise z-score of the ADC against a normative model (population tissue means on
  an imperfectly registered atlas anatomy, standard deviation growing with the mean), smoothed
  inside the brain with a 2 mm FWHM Gaussian, clipped to [-10, 10], 0 outside the brain.
  Confounders that make ZADC < -2 imperfect: atlas misregistration at CSF borders, subject-wide
  ADC shifts, normally-low maturing tracts, noise, and mild lesions.

Presets: ``small`` (default; 20 cases, 48-64 voxels in-plane, 12-24 slices, so a CPU demo trains
in minutes) and ``bonbid`` (37 cases at the real sizes: 128/160 in-plane, 16-60 slices).
The calibration against the real cases is in documentation/datasets.md
(``benchmarks/calibrate_synthetic.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hiennu.datasets.staging import staged_folder
from hiennu.errors import HiennuError
from hiennu.io.cases import channel_file_name
from hiennu.io.dataset_json import BONBID_CHANNELS, BONBID_LABELS, DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, write_image
from hiennu.log import get_logger, progress
from hiennu.paths import dataset_folder_name, raw_root

log = get_logger(__name__)

DEFAULT_SYNTHETIC_ID = 999
DEFAULT_SYNTHETIC_NAME = "SYNTHETIC"

# Population mean ADC per tissue (10^-6 mm^2/s) of a term neonate.
BACKGROUND, WHITE, CORTEX, DEEP_GREY, VENTRICLE, EXTRA_CSF, TRACT = range(7)
TISSUE_ADC = np.array([0.0, 1330.0, 1150.0, 1050.0, 3000.0, 2600.0, 1330.0], dtype=np.float32)
# Residual misregistration of the normative atlas (mm), widening its standard deviation at edges.
REGISTRATION_ERROR_MM = 2.0
# Between-subject standard deviation of the normative model: relative in tissue, absolute (10^-6 mm^2/s) in CSF.
TISSUE_SD = 0.10
CSF_SD = 1000.0
# Smallest lesion (voxels), so that tiny lesions survive partial volume on coarse grids.
MIN_LESION_VOXELS = 6
# Tissues a lesion may occupy.
LESION_TISSUES = (WHITE, CORTEX, DEEP_GREY, TRACT)


@dataclass(frozen=True)
class SyntheticPreset:
    """Grid ranges of a preset. Sizes in voxels; fields of view in mm; spacings in mm."""

    name: str
    num_cases: int
    inplane_sizes: tuple[int, ...]
    slice_range: tuple[int, int]
    inplane_fov_mm: tuple[float, float]
    slice_spacings_mm: tuple[float, ...]
    slab_mm: tuple[float, float]


PRESETS = {
    "small": SyntheticPreset("small", 20, (48, 56, 64), (12, 24), (180.0, 230.0), (4.5, 5.0, 6.0, 7.0, 8.0),
                             (95.0, 120.0)),
    "bonbid": SyntheticPreset("bonbid", 37, (128, 160), (16, 60), (160.0, 250.0), (2.0, 4.0, 4.8, 6.0),
                              (95.0, 120.0)),
}

# Lesion-size categories: name -> (fraction-of-brain range, log-uniform draw).
LESION_CATEGORIES = {
    "none": ((0.0, 0.0), False),
    "tiny": ((0.0003, 0.01), True),
    "moderate": ((0.01, 0.1), True),
    "large": ((0.1, 0.4), False),
    "massive": ((0.5, 0.68), False),
}
# Every block of 20 consecutive cases holds this mix (order shuffled per seed), matching the real
# dev cases: ~10% without lesion, ~65% under 1% of the brain, ~5% over 50%.
LESION_SCHEDULE = ("none",) * 2 + ("tiny",) * 11 + ("moderate",) * 4 + ("large",) * 2 + ("massive",)


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters of one brain, mm in the head frame (x left-right, y posterior-anterior, z inferior-superior)."""

    semi_axes: tuple[float, float, float]
    centre: tuple[float, float, float]
    cortex_depth: float
    csf_depth: float
    ventricle_scale: float
    deep_grey_scale: float
    tract_factor: float | None


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case: arrays (z, y, x), its geometry and a few descriptors."""

    case_id: str
    adc: np.ndarray
    zadc: np.ndarray
    label: np.ndarray
    geometry: Geometry
    lesion_category: str


def draw_geometry(rng: np.random.Generator, preset: SyntheticPreset) -> Geometry:
    """A square in-plane grid with a head-sized field of view, a random origin and (mostly) oblique direction."""
    n = int(rng.choice(preset.inplane_sizes))
    sxy = float(np.round(rng.uniform(*preset.inplane_fov_mm) / n, 4))
    sz = float(rng.choice(preset.slice_spacings_mm))
    nz = int(np.clip(np.round(rng.uniform(*preset.slab_mm) / sz), *preset.slice_range))
    if rng.random() < 0.3:
        direction = np.eye(3)
    else:
        axis = rng.normal(size=3)
        angle = np.deg2rad(rng.uniform(2.0, 12.0))
        direction = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    size = np.array([n, n, nz])
    spacing = np.array([sxy, sxy, sz])
    half_extent = direction @ ((size - 1) * spacing / 2.0)
    origin = -half_extent + rng.normal(0.0, 10.0, size=3)
    return Geometry((n, n, nz), (sxy, sxy, sz), tuple(float(np.round(v, 4)) for v in origin),
                    tuple(float(v) for v in direction.ravel()), "32-bit float")


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """A neonatal brain: semi-axes about 42 x 52 x 40 mm, varied per subject."""
    axes = (rng.uniform(39, 46), rng.uniform(48, 57), rng.uniform(36, 44))
    centre = tuple(rng.normal(0.0, 4.0, size=3))
    tract = float(rng.uniform(0.62, 0.85)) if rng.random() < 0.5 else None
    return Anatomy(axes, centre, float(rng.uniform(2.5, 4.0)), float(rng.uniform(0.8, 2.0)),
                   float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.85, 1.15)), tract)


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def tissue_map(anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, bump: np.ndarray | None = None) -> np.ndarray:
    """Tissue class per point (uint8, see the constants) for head-frame coordinates in mm (any shape).

    bump: relative perturbation of the brain radius per point (a bumpy surface), or None.
    """
    x, y, z = x - anat.centre[0], y - anat.centre[1], z - anat.centre[2]
    r = np.sqrt(_ellipsoid(x, y, z, (0, 0, 0), anat.semi_axes))
    if bump is not None:
        r = r / (1.0 + bump)
    mean_axis = float(np.mean(anat.semi_axes))
    depth = (1.0 - r) * mean_axis  # approximate mm below the brain surface
    t = np.zeros(r.shape, dtype=np.uint8)
    inside = r < 1.0
    t[inside] = WHITE
    t[inside & (depth < anat.csf_depth + anat.cortex_depth)] = CORTEX
    t[inside & (depth < anat.csf_depth)] = EXTRA_CSF
    fissure = inside & (np.abs(x) < 1.2) & (z > -5) & (r > 0.35)
    t[fissure] = EXTRA_CSF
    g = anat.deep_grey_scale
    for side in (-1, 1):
        deep = _ellipsoid(x, y, z, (side * 12.0, 2.0, -4.0), (9.0 * g, 13.0 * g, 9.0 * g)) < 1.0
        t[inside & deep] = DEEP_GREY
        if anat.tract_factor is not None:
            tract = _ellipsoid(x, y, z, (side * 19.0, 6.0, 2.0), (3.5, 14.0, 10.0)) < 1.0
            t[inside & tract & (t == WHITE)] = TRACT
        v = anat.ventricle_scale
        ventricle = _ellipsoid(x, y, z, (side * 6.0, 4.0, 9.0), (3.0 * v, 19.0, 4.5 * v)) < 1.0
        horn = _ellipsoid(x, y, z, (side * 14.0, -24.0, 4.0), (2.5 * v, 7.0, 5.0 * v)) < 1.0
        t[inside & (ventricle | horn)] = VENTRICLE
    return t


def _voxel_coordinates(geometry: Geometry, tilt: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, ...]:
    """Head-frame coordinates (mm) of every voxel centre, each shaped (z, y, x)."""
    nx, ny, nz = geometry.size_xyz
    sx, sy, sz = geometry.spacing_xyz
    zz, yy, xx = np.meshgrid((np.arange(nz) - (nz - 1) / 2) * sz, (np.arange(ny) - (ny - 1) / 2) * sy,
                             (np.arange(nx) - (nx - 1) / 2) * sx, indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()])
    head = tilt.T @ (points - shift[:, None])
    return tuple(c.reshape(zz.shape).astype(np.float32) for c in head)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing_zyx, scale_mm: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length about ``scale_mm``."""
    sigma = [max(scale_mm / s, 0.3) for s in spacing_zyx]
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def _masked_smooth(values: np.ndarray, mask: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian smoothing of ``values`` inside ``mask`` only (normalised convolution)."""
    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(values * m, sigma_vox, mode="constant")
    den = ndimage.gaussian_filter(m, sigma_vox, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def lesion_category(seed: int, index: int) -> str:
    """Lesion-size category of case ``index``: position in a per-seed shuffle of LESION_SCHEDULE."""
    block = index // len(LESION_SCHEDULE)
    order = np.random.default_rng([int(seed), block, 7]).permutation(len(LESION_SCHEDULE))
    return LESION_SCHEDULE[int(order[index % len(LESION_SCHEDULE)])]


def _draw_lesion_fraction(rng: np.random.Generator, category: str) -> float:
    (lo, hi), log_uniform = LESION_CATEGORIES[category]
    if hi == 0.0:
        return 0.0
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log_uniform else float(rng.uniform(lo, hi))


def _lesion_mask(rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, fraction: float,
                 spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Binary lesion mask with ``fraction`` of the brain voxels (at least MIN_LESION_VOXELS) and a depth map in [0, 1]."""
    depth = np.zeros(tissue.shape, dtype=np.float32)
    if fraction <= 0.0:
        return np.zeros(tissue.shape, dtype=bool), depth
    eligible = np.isin(tissue, LESION_TISSUES)
    n_target = int(min(max(MIN_LESION_VOXELS, round(fraction * brain.sum())), eligible.sum()))
    # Correlation length (mm): compact foci of a few voxels for tiny lesions, broad regions for large ones.
    scale = max(3.0 + 25.0 * min(fraction / 0.3, 1.0) ** 0.5, 1.2 * max(spacing_zyx[1:]))
    field = _smooth_field(rng, tissue.shape, spacing_zyx, scale)
    pattern = rng.choice(["deep", "watershed", "diffuse"], p=[0.3, 0.45, 0.25])
    if pattern == "deep":
        field = field + 1.5 * (tissue == DEEP_GREY)
    elif pattern == "watershed":
        field = field + 0.5 * (tissue == CORTEX) + 0.8 * (tissue == WHITE)
    scores = np.where(eligible, field, -np.inf).ravel()
    top = np.argpartition(-scores, n_target - 1)[:n_target]
    mask = np.zeros(scores.shape, dtype=bool)
    mask[top] = True
    mask = mask.reshape(tissue.shape)
    values = field[mask]
    low, high = float(values.min()), float(values.max())
    depth[mask] = (values - low) / max(high - low, 1e-6)
    return mask, depth


def generate_case(case_id: str, rng: np.random.Generator, preset: SyntheticPreset,
                  category: str = "tiny") -> SyntheticCase:
    """One synthetic case with a lesion of the given size ``category`` (see the module docstring)."""
    geometry = draw_geometry(rng, preset)
    spacing_zyx = geometry.spacing_zyx
    shape = geometry.size_zyx
    anat = draw_anatomy(rng)
    tilt = Rotation.from_rotvec(np.deg2rad(rng.uniform(-8, 8, size=3))).as_matrix()
    shift = rng.normal(0.0, 4.0, size=3)
    x, y, z = _voxel_coordinates(geometry, tilt, shift)
    bump = 0.04 * _smooth_field(rng, shape, spacing_zyx, 12.0)
    tissue = tissue_map(anat, x, y, z, bump)
    brain = tissue != BACKGROUND

    # Subject ADC: tissue means x subject factor x bias field, then partial volume and noise.
    subject_factor = float(rng.normal(1.02, 0.05))
    tissue_adc = TISSUE_ADC.copy()
    if anat.tract_factor is not None:
        tissue_adc[TRACT] = TISSUE_ADC[WHITE] * anat.tract_factor
    healthy = tissue_adc[tissue] * subject_factor * (1.0 + 0.05 * _smooth_field(rng, shape, spacing_zyx, 40.0))
    fraction = _draw_lesion_fraction(rng, category)
    lesion, depth = _lesion_mask(rng, tissue, brain, fraction, spacing_zyx)
    severity = float(rng.uniform(0.4, 0.65))
    adc = healthy * (1.0 - severity * (0.7 + 0.3 * depth) * lesion)
    pv_sigma = [0.35] * 3
    adc = _masked_smooth(adc.astype(np.float32), brain, pv_sigma)
    noise_sd = float(rng.uniform(0.02, 0.05))
    adc = np.abs(adc + adc * noise_sd * rng.standard_normal(shape) + 20.0 * rng.standard_normal(shape))

    # Skull-stripping rim: partial volume with the background, a few negative values.
    rim = brain & ~ndimage.binary_erosion(brain)
    damp = rim & (rng.random(shape) < 0.05)
    adc[damp] *= rng.uniform(0.2, 1.0, size=int(damp.sum()))
    negative = rim & (rng.random(shape) < 0.0015)
    adc[negative] = -rng.uniform(1.0, 400.0, size=int(negative.sum()))
    adc = np.where(brain, adc, 0.0).astype(np.float32)
    adc[brain & (np.abs(adc) < 1.0)] = 1.0

    # Normative model on an imperfectly registered atlas anatomy.
    atlas_anat = Anatomy(tuple(a * rng.normal(1.0, 0.025) for a in anat.semi_axes),
                         tuple(c + rng.normal(0.0, 1.5) for c in anat.centre),
                         anat.cortex_depth * rng.uniform(0.8, 1.2), anat.csf_depth * rng.uniform(0.7, 1.3),
                         anat.ventricle_scale * rng.uniform(0.75, 1.3), 1.0, None)
    atlas_tissue = tissue_map(atlas_anat, x, y, z, None)
    atlas_tissue[brain & (atlas_tissue == BACKGROUND)] = CORTEX
    atlas_sigma = [REGISTRATION_ERROR_MM / s for s in spacing_zyx]
    mean = _masked_smooth(TISSUE_ADC[atlas_tissue].astype(np.float32), brain, atlas_sigma)
    csf_share = _masked_smooth(np.isin(atlas_tissue, (VENTRICLE, EXTRA_CSF)).astype(np.float32), brain, atlas_sigma)
    # Between-subject spread: a share of the mean, much wider where the atlas expects CSF (its extent
    # varies between subjects), plus the edge term of the residual registration error.
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(mean, *spacing_zyx)))
    sd = np.sqrt((TISSUE_SD * mean) ** 2 + (CSF_SD * csf_share) ** 2 + (REGISTRATION_ERROR_MM * gradient) ** 2) + 30.0
    smooth_sigma = [2.0 / 2.355 / s for s in spacing_zyx]
    z_raw = np.where(brain, (_masked_smooth(adc, brain, smooth_sigma) - mean) / sd, 0.0).astype(np.float32)
    zadc = np.clip(z_raw, -10.0, 10.0).astype(np.float32)
    zadc[~brain] = 0.0
    return SyntheticCase(case_id, adc, zadc, lesion.astype(np.uint8), geometry, category)


def case_ids(num_cases: int, prefix: str = "SYN") -> list[str]:
    return [f"{prefix}_{i:03d}" for i in range(num_cases)]


def make_synthetic_dataset(target: int | str | Path = DEFAULT_SYNTHETIC_ID, num_cases: int | None = None,
                           seed: int = 0, preset: str = "small", name: str = DEFAULT_SYNTHETIC_NAME,
                           overwrite: bool = False, case_prefix: str = "SYN") -> Path:
    """Write a synthetic raw dataset and return its folder.

    target: a dataset id (int; the folder is ``$hiennu_raw/DatasetNNN_name``) or a folder path.
    num_cases: default from the preset (20 for ``small``, 37 for ``bonbid``).
    case_prefix: cases are named ``PREFIX_000``, ``PREFIX_001`` ...
    Deterministic per ``seed``: case ``i`` depends only on ``(seed, i)``. Written to a hidden
    temporary folder and renamed into place; an existing dataset is replaced only with ``overwrite``.
    """
    if preset not in PRESETS:
        raise HiennuError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    n = spec.num_cases if num_cases is None else int(num_cases)
    if n < 1:
        raise HiennuError(f"number of synthetic cases must be at least 1, got {n}")
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        folder = raw_root() / dataset_folder_name(int(target), name)
    else:
        folder = Path(target)
    with staged_folder(folder, overwrite=overwrite) as out:
        for index, cid in enumerate(progress(case_ids(n, case_prefix), desc=f"synthesizing {preset} cases")):
            case = generate_case(cid, np.random.default_rng([int(seed), index]), spec, lesion_category(seed, index))
            write_image(case.adc, case.geometry, out / "imagesTr" / channel_file_name(cid, 0, ".mha"))
            write_image(case.zadc, case.geometry, out / "imagesTr" / channel_file_name(cid, 1, ".mha"))
            write_image(case.label, case.geometry, out / "labelsTr" / f"{cid}.mha")
        dj = DatasetJson(
            name=name, channel_names=list(BONBID_CHANNELS), labels=dict(BONBID_LABELS), num_training=n,
            file_ending=".mha",
            description=f"Synthetic BONBID-like dataset made by hiennu_make_synthetic (preset {preset}, "
                        f"seed {seed}, {n} cases): ADC in 10^-6 mm^2/s, skull-stripped (background 0); ZADC is "
                        f"a z-score against a synthetic normative model, clipped to [-10, 10].",
            reference="Synthetic; model calibrated against BONBID-HIE (Bao et al. 2023, doi:10.5281/zenodo.8104103). "
                      "See documentation/datasets.md.",
            licence="Generated data, free to use.")
        save_dataset_json(dj, out / "dataset.json")
    log.info("wrote %s: %d synthetic case(s), preset %s, seed %d", folder, n, preset, seed)
    return folder
