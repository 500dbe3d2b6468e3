"""Reading and writing images with SimpleITK, and the geometry record that travels with them.

Arrays are numpy order ``(z, y, x)``; :class:`Geometry` stores SimpleITK order ``(x, y, z)``
(size in voxels, spacing in mm, origin in mm, direction as 9 row-major cosines).
Supported endings: ``.mha``, ``.mhd``, ``.nii.gz``, ``.nii``, ``.nrrd``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from hiennu.errors import HiennuError, ImageReadError, WriteError
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


#: what ``hiennu_predict --save-probabilities image`` appends to a case id: ``CASE_prob.mha`` beside ``CASE.mha``
PROBABILITY_IMAGE_SUFFIX = "_prob"


def is_probability_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as a probability image ``CASE_prob.<ending>``, which folders of masks leave out."""
    return image_ending(path) is not None and strip_ending(path).endswith(PROBABILITY_IMAGE_SUFFIX)


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

    def differences(self, other: "Geometry") -> list[str]:
        """Ways ``other`` lies on a different grid than this one (empty if the same); see :func:`grid_differences`."""
        return grid_differences(self, other)

    def on_grid_of(self, reference: "Geometry") -> "Geometry":
        """This geometry with ``reference``'s spacing, origin and direction (size and pixel type kept).

        Used once :func:`grid_differences` has found the two grids the same within tolerance, so
        outputs carry the reference's geometry exactly.
        """
        return Geometry(self.size_xyz, reference.spacing_xyz, reference.origin_xyz, reference.direction,
                        self.pixel_type)


# "Same grid", decided the way imaging tools do (relative to the voxel size). The one definition used
# by the converter, the integrity check, prediction and evaluation; documentation/reliability.md.
GRID_ORIGIN_TOLERANCE_VOXELS = 0.01  # origins within 1% of the smallest voxel side (0.007 mm at 0.7 mm)
GRID_SPACING_RTOL = 1e-4             # spacings within 1e-4 relative (0.0256 voxel drift over 256 voxels)
GRID_DIRECTION_ATOL = 1e-4           # direction cosines (unit vectors) within 1e-4


def grid_differences(reference: Geometry, other: Geometry) -> list[str]:
    """Human-readable list of the ways ``other`` lies on a different grid than ``reference``.

    Empty when the grids are the same within the tolerances above: equal size; spacing within
    :data:`GRID_SPACING_RTOL` relative; origins (mm) no further apart than
    :data:`GRID_ORIGIN_TOLERANCE_VOXELS` times the smallest spacing of ``reference``; every
    direction cosine within :data:`GRID_DIRECTION_ATOL`. Pixel type is not compared. Each entry
    prints both values (reference first) with enough digits to show the difference, and the
    difference itself.
    """
    diffs = []
    if tuple(reference.size_xyz) != tuple(other.size_xyz):
        diffs.append(f"size {tuple(reference.size_xyz)} vs {tuple(other.size_xyz)} voxels")
    ref_sp, oth_sp = np.asarray(reference.spacing_xyz, float), np.asarray(other.spacing_xyz, float)
    rel = np.abs(ref_sp - oth_sp) / np.maximum(np.abs(ref_sp), 1e-12)
    if not np.all(rel <= GRID_SPACING_RTOL):
        diffs.append(f"spacing {_fmt(ref_sp)} vs {_fmt(oth_sp)} mm (relative difference up to {rel.max():.3g}, "
                     f"tolerance {GRID_SPACING_RTOL:g})")
    offset = float(np.linalg.norm(np.asarray(reference.origin_xyz, float) - np.asarray(other.origin_xyz, float)))
    tol_mm = GRID_ORIGIN_TOLERANCE_VOXELS * float(np.min(np.abs(ref_sp)))
    if not offset <= tol_mm:
        diffs.append(f"origin {_fmt(reference.origin_xyz)} vs {_fmt(other.origin_xyz)} mm ({offset:.6g} mm apart, "
                     f"tolerance {tol_mm:.3g} mm = {GRID_ORIGIN_TOLERANCE_VOXELS:g} of the smallest voxel side)")
    dir_diff = float(np.max(np.abs(np.asarray(reference.direction, float) - np.asarray(other.direction, float))))
    if not dir_diff <= GRID_DIRECTION_ATOL:
        diffs.append(f"direction {_fmt(reference.direction)} vs {_fmt(other.direction)} (cosines differ by up "
                     f"to {dir_diff:.3g}, tolerance {GRID_DIRECTION_ATOL:g})")
    return diffs


def same_grid(reference: Geometry, other: Geometry) -> bool:
    """True when :func:`grid_differences` finds nothing."""
    return not grid_differences(reference, other)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.10g}" for v in values) + ")"


# Voxel sides outside this range (mm) are refused as header errors, not images of a head.
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0


def spacing_problem(spacing_xyz, path: str | os.PathLike) -> str | None:
    """Why ``spacing_xyz`` (mm, as the file's header states it) is not a usable voxel size, or None.

    Refused: any value that is not finite, zero or negative, below :data:`MIN_SPACING_MM` or above
    :data:`MAX_SPACING_MM`. The message names ``path`` and the values.
    """
    values = [float(v) for v in spacing_xyz]
    if all(np.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values):
        return None
    return (f"{path}: voxel spacing {_fmt(values)} mm (x, y, z) in the header is not usable; every spacing must be "
            f"between {MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm (zero, negative or absurd values are header "
            f"errors); fix the header (e.g. SimpleITK SetSpacing) and re-export the file")


def header_spacing(path: str | os.PathLike) -> tuple[float, ...] | None:
    """The voxel spacing exactly as the file's header writes it (x, y, z in mm), or None if not parsed.

    SimpleITK silently turns some bad values into good-looking ones (a negative MetaImage or NIfTI
    spacing is read as its absolute value), so the header text is read here: ``ElementSpacing``
    (or ``ElementSize``) of ``.mha``/``.mhd``, ``pixdim[1:4]`` of NIfTI-1/2 (``.nii``, ``.nii.gz``).
    """
    path = Path(path)
    ending = image_ending(path)
    try:
        if ending in (".mha", ".mhd"):
            with open(path, "rb") as f:
                head = f.read(8192)
            for key in (b"ElementSpacing", b"ElementSize"):
                for line in head.split(b"\n"):
                    name, _, value = line.partition(b"=")
                    if name.strip() == key:
                        return tuple(float(v) for v in value.split()[:3])
            return None
        if ending in (".nii", ".nii.gz"):
            opener = gzip.open if ending == ".nii.gz" else open
            with opener(path, "rb") as f:
                head = f.read(540)
            for order in ("<", ">"):
                size = struct.unpack(order + "i", head[:4])[0]
                if size == 348:
                    return tuple(float(v) for v in struct.unpack(order + "3f", head[80:92]))
                if size == 540:
                    return tuple(float(v) for v in struct.unpack(order + "3d", head[112:136]))
    except (OSError, ValueError, struct.error, EOFError, zlib.error):  # a corrupt file: SimpleITK says why below
        return None
    return None


_META_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                       "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                       "MET_DOUBLE": 8}
_CHUNK = 1 << 20


_META_HEADER_BYTES = 16384


@dataclass(frozen=True)
class _MetaHeader:
    """What a MetaImage header says about its voxel data: ``fields`` up to ``ElementDataFile``; ``data`` the file
    that holds the voxels and ``offset`` where they start in it (None: no single data file is named, or a list or
    pattern of them); ``data_bytes`` how many bytes they take uncompressed (0 when the header does not say)."""

    fields: dict
    data: Path | None
    offset: int
    data_bytes: int


def _meta_header(path: Path) -> _MetaHeader | None:
    """The header of the MetaImage ``path`` as far as its ``ElementDataFile`` line, or None when that line is not
    within the first 16 KiB (a header cut off, or not a MetaImage). Raises OSError, ValueError."""
    with open(path, "rb") as f:
        head = f.read(_META_HEADER_BYTES)
    fields = {}
    for line in head.split(b"\n"):
        name, sep, value = line.partition(b"=")
        if sep:
            fields[name.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
        if name.strip() == b"ElementDataFile":
            break
    if "ElementDataFile" not in fields:
        return None
    source = fields["ElementDataFile"]
    try:  # ITK reads sizes such as "4.0"; a size it cannot read is its own error to give
        data_bytes = (int(np.prod([int(float(v)) for v in fields.get("DimSize", "").split()]))
                      * _META_ELEMENT_BYTES.get(fields.get("ElementType", ""), 0)
                      * int(float(fields.get("ElementNumberOfChannels", "1"))))
    except ValueError:
        data_bytes = 0
    if not source or source.split()[0] == "LIST" or "%" in source:
        return _MetaHeader(fields, None, 0, data_bytes)   # no data file named (SimpleITK says so), a list or pattern
    if source == "LOCAL":
        end = head.find(b"\n", head.index(b"ElementDataFile"))
        return _MetaHeader(fields, path, end + 1 if end >= 0 else len(head), data_bytes)
    return _MetaHeader(fields, path.parent / source, 0, data_bytes)


def voxel_data_problem(path: str | os.PathLike) -> str | None:
    """Why the voxels of ``path`` are incomplete or damaged, as a phrase to follow ``"PATH: "`` (e.g. ``"its
    compressed voxel data is corrupt (...)"``), or None; every reader runs it before ITK (:func:`read_sitk`, the raw
    dataset check). A MetaImage's header is parsed once for both of its checks.

    Why this exists: SimpleITK does not verify the checksum of a ``.nii.gz``'s gzip stream (CRC-32) or of a
    compressed MetaImage's zlib stream (Adler-32), so a flipped bit decodes to other voxels without a word, and a
    converter would copy them on with a fresh, valid checksum; and ITK's MetaImage reader prints its own complaints
    about a header cut off before ``ElementDataFile``, or uncompressed voxels that end early, straight to standard
    error (lines ``-q`` cannot silence) before its exception. What SimpleITK reads besides is let through as it reads
    it: a ``.nii.gz`` that is not gzipped at all, bytes after its gzip stream, a MetaImage whose data is gzip- rather
    than zlib-wrapped (both are inflated), ASCII data, a header longer than 16 KiB, a ``LIST`` of data files.
    """
    path = Path(path)
    ending = image_ending(path)
    if ending not in (".nii.gz", ".mha", ".mhd"):
        return None
    try:
        if ending == ".nii.gz":
            damaged = _compressed_problem(path, None)
        else:
            header = _meta_header(path)
            if header is None:
                return ("its MetaImage header ends before its ElementDataFile line (truncated file?)"
                        if path.stat().st_size < _META_HEADER_BYTES else None)
            if header.data is None or header.fields.get("BinaryData", "True").lower() == "false":
                return None
            if not header.data.is_file():
                return f"its voxel data file {header.data} is missing"
            if header.fields.get("CompressedData", "False").lower() == "true":
                damaged = _compressed_problem(path, header)
            else:
                present = header.data.stat().st_size - header.offset
                return (f"its voxel data ends early: {present} of {header.data_bytes} bytes (truncated file?)"
                        if header.data_bytes and present < header.data_bytes else None)
    except (OSError, ValueError) as e:
        return str(e) or type(e).__name__
    return f"its compressed voxel data is corrupt ({damaged})" if damaged else None


def compressed_data_problem(path: str | os.PathLike) -> str | None:
    """Why the compressed voxel data of ``path`` (``.nii.gz``, compressed ``.mha``/``.mhd``) is damaged, or None (also
    for uncompressed files): the checksum pass of :func:`voxel_data_problem` alone (``benchmarks/bench_image_read.py``
    times it)."""
    path = Path(path)
    ending = image_ending(path)
    if ending not in (".nii.gz", ".mha", ".mhd"):
        return None
    try:
        return _compressed_problem(path, None if ending == ".nii.gz" else _meta_header(path))
    except (OSError, ValueError) as e:
        return str(e) or type(e).__name__


def _compressed_problem(path: Path, header: _MetaHeader | None) -> str | None:
    """The inflation check of a ``.nii.gz`` (``header`` None) or of a MetaImage whose parsed ``header`` says its data is
    compressed (otherwise None)."""
    try:
        if header is None:
            if image_ending(path) != ".nii.gz":
                return None
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return None
            return _inflate_problem(path, 0, wbits=31, members=True)
        if header.fields.get("CompressedData", "False").lower() != "true" or header.data is None:
            return None
        return _inflate_problem(header.data, header.offset, wbits=47, expected=header.data_bytes)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        return str(e) or type(e).__name__


def _inflate_problem(path: Path, offset: int, wbits: int, expected: int = 0, members: bool = False) -> str | None:
    """Inflate the stream that starts at ``offset`` of ``path`` (wbits 31: gzip; 47: zlib or gzip) to its end, in
    1 MiB pieces, checking its checksum. With ``members`` (gzip), each further gzip member that follows is checked
    too (bgzip and concatenated files hold several, and readers take them all); other bytes after a stream are not
    read, as zlib's gzread ignores them. None when all is whole (and, with ``expected``, inflates to exactly that
    many bytes)."""
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        while True:
            inflater = zlib.decompressobj(wbits)
            chunk = pending
            while not inflater.eof:
                if not chunk:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        return "the compressed stream ends early (truncated file?)"
                total += len(inflater.decompress(chunk, _CHUNK))
                chunk = inflater.unconsumed_tail
            pending = inflater.unused_data
            if not members:
                break
            if len(pending) < 2:
                pending += f.read(2 - len(pending))
            if pending[:2] != b"\x1f\x8b":   # no further member: what follows is not data
                break
    if expected and total != expected:
        return f"it inflates to {total} bytes, its header says {expected}"
    return None


#: ITK's reader for each ending: named, so that an upper-case ending (CASE.MHA), which ITK's factory matches
#: case-sensitively and then refuses as unreadable, is read like its lower-case twin
IMAGE_IO = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
            ".nrrd": "NrrdImageIO"}


def image_reader(path: str | os.PathLike) -> sitk.ImageFileReader:
    """A SimpleITK reader of ``path`` with ITK's reader chosen by the (case-insensitive) ending (:data:`IMAGE_IO`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    ending = image_ending(path)
    if ending is not None:
        reader.SetImageIO(IMAGE_IO[ending])
    return reader


def direction_problem(direction: Sequence[float], path: str | os.PathLike) -> str | None:
    """Why a header's direction matrix (9 numbers, row-major) cannot orient the image (singular), or None."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-6:
        return (f"{path}: the direction matrix in its header ({' '.join(f'{v:g}' for v in direction)}) is singular, "
                f"so the image has no orientation; fix the header (e.g. TransformMatrix of a .mha, the sform/qform "
                f"of a NIfTI) or re-export the image")
    return None


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read ``path`` as a SimpleITK image, raising :class:`ImageReadError` with the file named.

    Besides unreadable files, refuses voxel spacings that are zero, negative or absurd
    (:func:`spacing_problem`), as written in the header (:func:`header_spacing`) or as read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); re-export or re-copy it")
    if image_ending(path) is None:
        raise ImageReadError(f"{path}: unsupported file ending; use one of {', '.join(IMAGE_ENDINGS)}")
    raw_spacing = header_spacing(path)
    problem = spacing_problem(raw_spacing, path) if raw_spacing is not None else None
    if problem:
        raise ImageReadError(problem)
    damaged = voxel_data_problem(path)
    if damaged:
        raise ImageReadError(f"{path}: {damaged}; re-export or re-copy it")
    reader = image_reader(path)
    try:
        reader.ReadImageInformation()
        problem = direction_problem(reader.GetDirection(), path) if reader.GetDimension() == 3 else None
        if problem:
            raise ImageReadError(problem)
        image = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"{path}: cannot be read as an image: {sitk_reason(e)}") from None
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    problem = spacing_problem(image.GetSpacing(), path)
    if problem:
        raise ImageReadError(problem)
    return image


def sitk_reason(error: Exception) -> str:
    """The one useful line of a SimpleITK error, for a file known to exist.

    ITK reports a file that no reader accepts, or whose voxel data ends early, as "does not
    exist" or with the stale errno "No such file or directory"; both are reworded, since the file
    is there.
    """
    text = str(error).strip()
    if any(s in text for s in ("does not exist", "No such file", "Unable to determine ImageIO reader",
                                "File cannot be read")):
        return "the header or voxel data is incomplete or corrupt (truncated file?); re-export or re-copy it"
    last = text.splitlines()[-1] if text else type(error).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        last = last.split(prefix, 1)[-1].strip()
    return f"{last} (truncated or corrupt file?)"


def read_image(path: str | os.PathLike, dtype: np.dtype | None = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as ``(array (z, y, x), Geometry)``; ``dtype=None`` keeps the file's type."""
    image = read_sitk(path)
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.from_image(image)


def nonfinite_problem(array: np.ndarray) -> str | None:
    """``"N NaN and M infinite voxel(s)"`` when ``array`` holds any, else None."""
    if array.dtype.kind != "f":
        return None
    finite = np.isfinite(array)
    if finite.all():
        return None
    n_nan = int(np.isnan(array).sum())
    return f"{n_nan} NaN and {int(array.size - finite.sum()) - n_nan} infinite voxel(s)"


def read_finite_image(path: str | os.PathLike, where: str) -> tuple[np.ndarray, Geometry]:
    """:func:`read_image` (float32), refusing an image with NaN or infinite voxels with a :class:`HiennuError` that
    names ``where`` (e.g. ``"case A: ADC image"``) and the file. For the images that post-processing, scoring and
    pictures read beside the masks: a NaN compares false with every threshold, so an ADC cap fitted over it became
    NaN and a case's mask changed without a word."""
    array, geometry = read_image(path)
    problem = nonfinite_problem(array)
    if problem:
        raise HiennuError(f"{where} {path} has {problem}; replace them (e.g. by 0 outside the brain) and run the "
                          f"command again")
    return array, geometry


def read_binary_mask(path: str | os.PathLike, what: str) -> tuple[np.ndarray, Geometry]:
    """Read a lesion mask as ``(uint8 array (z, y, x) of 0 and 1, Geometry)``. Any other value (a probability
    map given by mistake, a label of several classes) raises :class:`HiennuError` showing the values, rather than
    being cut to 0 or 1 by the cast. what: names the file in the message, e.g. ``"case A: prediction file"``."""
    array, geometry = read_image(path, dtype=None)
    if array.dtype != bool and np.any((array != 0) & (array != 1)):
        values = np.unique(array)
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise HiennuError(f"{what} {path} is not a binary mask (values {shown}); masks must hold 0 (background) and "
                          f"1 (lesion) only")
    return array.astype(np.uint8, copy=False), geometry


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write ``array (z, y, x)`` with ``geometry``'s spacing/origin/direction, atomically.

    The array's dtype is the file's pixel type (cast before calling, e.g. ``uint8`` for masks). The file written is
    read back and compared before it replaces ``path`` (:func:`_check_written`): SimpleITK's writers do not report a
    failed write (a full disk left empty or cut-off files, and the command ended as if it had written them).
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
        _write_sitk(image, path, compress, path)
        _check_written(path, array, path)
        return
    with atomic_path(path, suffix=ending) as tmp:
        _write_sitk(image, tmp, compress, path)
        _check_written(tmp, array, path)


def _write_sitk(image: sitk.Image, written: Path | str, compress: bool, path: str | os.PathLike) -> None:
    """``sitk.WriteImage`` into ``written``, its failure a :class:`HiennuError` naming ``path`` (not the hidden
    temporary file) and ITK's reason."""
    try:
        sitk.WriteImage(image, str(written), useCompression=compress)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Reason:")),
                      lines[-1] if lines else type(e).__name__)
        raise WriteError(f"{path}: cannot be written ({reason}); free some space or choose a folder you can "
                          f"write to, and run the command again") from None


def _check_written(written: Path | str, array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise :class:`WriteError` naming ``path`` unless ``written`` reads back as ``array``, voxel for voxel where
    ``array`` is finite (ITK's NIfTI reader turns the NaN and infinities its writer stored into 0)."""
    try:
        back = sitk.GetArrayFromImage(read_sitk(written))
    except ImageReadError:
        back = None
    finite = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    if back is None or back.shape != array.shape or not np.array_equal(back[finite], array[finite]):
        raise WriteError(f"{path}: writing it failed (the file written does not read back whole: is the disk or "
                          f"quota full?); free some space and run the command again")
