"""Reading and writing images with SimpleITK, and the geometry record that travels with them.

Arrays are numpy order ``(z, y, x)``; :class:`Geometry` stores SimpleITK order ``(x, y, z)``
(size in voxels, spacing in mm, origin in mm, direction as 9 row-major cosines).
Supported endings: ``.mha``, ``.mhd``, ``.nii.gz``, ``.nii``, ``.nrrd``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hiennu.errors import ImageReadError
from hiennu.io.atomic import atomic_path

IMAGE_ENDINGS = (".nii.gz", ".mha", ".mhd", ".nii", ".nrrd")


def image_ending(path: str | os.PathLike) -> str | None:
    """The supported image ending of ``path`` (``".nii.gz"``, ``".mha"`` ...) or None."""
    name = Path(path).name.lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def strip_ending(path: str | os.PathLike) -> str:
    """File name without its image ending: ``CASE_0000.nii.gz`` -> ``CASE_0000``."""
    name = Path(path).name
    ending = image_ending(name)
    return name[: -len(ending)] if ending else name


@dataclass(frozen=True)
class Geometry:
    """Where an image lies in the world, in SimpleITK order.

    size_xyz: voxels per axis (x, y, z); spacing_xyz: mm; origin_xyz: mm (centre of voxel 0);
    direction: 9 direction cosines, row-major 3x3; pixel_type: SimpleITK pixel type string
    (e.g. ``"32-bit float"``).
    """

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    pixel_type: str = "32-bit float"

    @property
    def size_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.size_xyz))  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing_xyz))  # type: ignore[return-value]

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Geometry":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                   tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()),
                   image.GetPixelIDTypeAsString())

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Copy spacing, origin and direction onto ``image`` (sizes must agree)."""
        if tuple(image.GetSize()) != tuple(self.size_xyz):
            raise ValueError(f"image size {image.GetSize()} differs from geometry size {self.size_xyz}")
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)
        return image

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(int(v) for v in d["size_xyz"]), tuple(float(v) for v in d["spacing_xyz"]),
                   tuple(float(v) for v in d["origin_xyz"]), tuple(float(v) for v in d["direction"]),
                   d.get("pixel_type", "32-bit float"))

    def differences(self, other: "Geometry", rtol: float = 1e-4, atol_mm: float = 1e-3) -> list[str]:
        """Human-readable list of the ways ``other`` lies on a different grid (empty if the same).

        Spacing is compared relatively (``rtol``), origin in mm (``atol_mm``), direction to 1e-4.
        Pixel type is not compared.
        """
        diffs = []
        if tuple(self.size_xyz) != tuple(other.size_xyz):
            diffs.append(f"size {tuple(self.size_xyz)} vs {tuple(other.size_xyz)}")
        if not np.allclose(self.spacing_xyz, other.spacing_xyz, rtol=rtol, atol=0):
            diffs.append(f"spacing {_fmt(self.spacing_xyz)} vs {_fmt(other.spacing_xyz)} mm")
        if not np.allclose(self.origin_xyz, other.origin_xyz, rtol=0, atol=atol_mm):
            diffs.append(f"origin {_fmt(self.origin_xyz)} vs {_fmt(other.origin_xyz)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            diffs.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return diffs


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read ``path`` as a SimpleITK image, raising :class:`ImageReadError` with the file named."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); re-export or re-copy it")
    if image_ending(path) is None:
        raise ImageReadError(f"{path}: unsupported file ending; use one of {', '.join(IMAGE_ENDINGS)}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise ImageReadError(f"{path}: cannot be read as an image (corrupt or truncated?): {first}") from None
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    return image


def read_image(path: str | os.PathLike, dtype: np.dtype | None = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as ``(array (z, y, x), Geometry)``; ``dtype=None`` keeps the file's type."""
    image = read_sitk(path)
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.from_image(image)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write ``array (z, y, x)`` with ``geometry``'s spacing/origin/direction, atomically.

    The array's dtype is the file's pixel type (cast before calling, e.g. ``uint8`` for masks).
    """
    array = np.ascontiguousarray(array)
    if array.ndim != 3 or tuple(array.shape) != tuple(geometry.size_zyx):
        raise ValueError(f"array shape {array.shape} (z, y, x) does not match geometry size_zyx {geometry.size_zyx}")
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    ending = image_ending(path)
    if ending is None:
        raise ValueError(f"{path}: unsupported file ending; use one of {', '.join(IMAGE_ENDINGS)}")
    if ending == ".mhd":
        # header + raw pair: write both under final names (no single-file atomic rename possible)
        sitk.WriteImage(image, str(path), useCompression=compress)
        return
    with atomic_path(path, suffix=ending) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
