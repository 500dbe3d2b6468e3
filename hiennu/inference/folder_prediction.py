"""Predicting every case of a folder: discovery, a reader thread, batched compute, a writer thread.

:class:`CasePredictor` is the base of every predictor (the trained model's :class:`Predictor`
and the ZADC baseline). A subclass says how one case is prepared on the CPU (:meth:`prepare`,
run in the reader thread) and how a batch of prepared cases becomes native-grid masks
(:meth:`predict_prepared`, run in the calling thread, on the device). :meth:`predict_folder`
overlaps the three: a reader thread reads and prepares cases into a bounded queue, the calling
thread batches them through the device, and a writer thread removes small components and writes
each mask atomically, so the device waits neither for the disk nor for the CPU pre-processing.

Safety: the output folder may not be the input folder or lie inside it; a planned output that is
also an input file is refused; every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from hiennu.errors import HiennuError, WriteError
from hiennu.inference.layouts import InputCase, discover_input_cases, read_case
from hiennu.io.atomic import atomic_path
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.folders import INSIDE, IS, folder_relation, refuse_raw_data_output
from hiennu.io.image import PROBABILITY_IMAGE_SUFFIX, Geometry, nonfinite_problem, read_sitk, write_image
from hiennu.log import get_logger, progress
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing

logger = get_logger(__name__)

PROBABILITY_FORMATS = ("npz", "image")
_DONE = object()


@dataclass
class PredictionReport:
    """What :meth:`CasePredictor.predict_folder` did. skipped / failed: case id -> reason."""

    out_dir: Path
    predicted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no case was skipped or failed."""
        return not self.skipped and not self.failed

    def summary(self) -> str:
        parts = [f"{len(self.predicted)} predicted"]
        if self.already_done:
            parts.append(f"{len(self.already_done)} already there (--continue-prediction)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped ({', '.join(sorted(self.skipped))})")
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(sorted(self.failed))})")
        return f"{self.out_dir}: " + ", ".join(parts)


def check_output_folder(in_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder equal to, or inside, the input folder (outputs must never touch inputs),
    or one that is (or lies below) an existing file."""
    dst = Path(out_dir).resolve()
    if dst.exists() and not dst.is_dir():
        raise HiennuError(f"output folder {out_dir} is an existing file, not a folder; give a folder for the masks")
    blocking = next((p for p in dst.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise HiennuError(f"output folder {out_dir} cannot be created: {blocking} is a file, not a folder")
    relation = folder_relation(out_dir, in_dir)
    if relation in (IS, INSIDE):  # around it is fine: the outputs land beside the input folder, not in it
        where = "the input folder" if relation == IS else "inside the input folder"
        raise HiennuError(f"output folder {out_dir} is {where} {in_dir}; choose an output folder outside it so no "
                          f"input can be overwritten")
    refuse_raw_data_output("-o", out_dir)


def probability_path(out_dir: Path, case: InputCase, fmt: str) -> Path:
    """``CASE_prob.npz`` (key ``probabilities``, float32 (z, y, x)) or ``CASE_prob.<image ending>``."""
    name = f"{case.case_id}{PROBABILITY_IMAGE_SUFFIX}"
    return out_dir / (f"{name}.npz" if fmt == "npz" else f"{name}{case.output_ending}")


def output_is_complete(path: Path) -> bool:
    """True when ``path`` is a finished output: a non-empty file that reads back whole.

    ``.npz`` probability maps must load with their ``probabilities`` array; images must decode
    (header and voxels). Used by ``--continue-prediction``, so a 0-byte, truncated or unreadable
    output is predicted again instead of counted as done.
    """
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return "probabilities" in f.files and f["probabilities"].size > 0
        read_sitk(path)
        return True
    except Exception:  # HiennuError, OSError, zipfile.BadZipFile ...: a damaged file is not done
        return False


def write_probabilities(prob: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a probability map (z, y, x) float32 atomically, as ``.npz`` or as an image with ``geometry``."""
    if path.suffix == ".npz":
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=prob.astype(np.float32, copy=False),
                                spacing_xyz=np.asarray(geometry.spacing_xyz), origin_xyz=np.asarray(geometry.origin_xyz),
                                direction=np.asarray(geometry.direction))
    else:
        write_image(prob.astype(np.float32, copy=False), geometry, path)


def check_postprocessing_channels(post: PostProcessing, channel_names: Sequence[str], name: str) -> None:
    """Refuse post-processing that reads a channel (ZADC for the rule, ADC for the cap and the lesion filter)
    the predictor's inputs do not have; ``name`` names the model (or ensemble) in the message."""
    adc_channel, zadc_channel = adc_zadc_channels(channel_names)
    for needed, label, missing in ((post.needs_zadc, "a ZADC", zadc_channel is None),
                                   (post.needs_adc, "an ADC", adc_channel is None)):
        if needed and missing:
            raise HiennuError(f"{name}: its post-processing ({post.name}) needs {label} channel, but the model's "
                              f"channels are {', '.join(channel_names)}; delete its postprocessing.json "
                              f"(or pass use_postprocessing=False) to predict without it")


class CasePredictor(ABC):
    """Base class of predictors: one case (:meth:`predict_case`) or a whole folder (:meth:`predict_folder`).

    Subclasses set ``channel_names`` (input channel order), ``batch_size`` (cases per device
    batch) and ``postprocessing`` (the :class:`~hiennu.postprocessing.record.PostProcessing` applied to each
    mask, its component-size rule included), and implement :meth:`prepare` and :meth:`predict_prepared`.
    """

    channel_names: Sequence[str] = ("ADC", "ZADC")
    batch_size: int = 1
    name: str = "predictor"
    postprocessing: PostProcessing = PostProcessing()

    @property
    def min_component_voxels(self) -> int:
        """Components smaller than this are removed from each mask (0 or 1 keeps all): the post-processing's."""
        return self.postprocessing.min_component_voxels

    @abstractmethod
    def prepare(self, images: list[np.ndarray], geometry: Geometry) -> Any:
        """CPU work for one case (reader thread): images are float32 ``(z, y, x)`` in channel order."""

    @abstractmethod
    def predict_prepared(self, prepared: list[Any], geometries: list[Geometry],
                         need_probabilities: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Masks (uint8 {0, 1}, native ``(z, y, x)``, before component removal) and, if asked,
        probability maps (float32, native ``(z, y, x)``) for a batch of prepared cases."""

    def postprocess(self, mask: np.ndarray, images: list[np.ndarray] | None = None,
                    spacing_zyx: Sequence[float] | None = None,
                    probabilities: np.ndarray | None = None) -> np.ndarray:
        """``self.postprocessing`` applied to one mask (writer thread); uint8 {0, 1} out.

        images: the case's input channels (float32 ``(z, y, x)``, raw values, channel order), for
        post-processing that looks at them (the trained model's ``postprocessing.json``); spacing_zyx:
        the case's voxel spacing (mm), for post-processing that measures in mm; probabilities: the
        prediction's sigmoid probabilities (native ``(z, y, x)``), for a lesion filter that asks the network.
        """
        post = self.postprocessing
        zadc = adc = None
        if post.needs_images and images is not None:
            adc_k, zadc_k = adc_zadc_channels(self.channel_names)
            zadc = images[zadc_k] if zadc_k is not None else None
            adc = images[adc_k] if adc_k is not None else None
        return apply_postprocessing(mask, post, zadc, adc, spacing_zyx, probabilities)

    def predict_case(self, images: list[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """``(mask uint8 (z, y, x), probabilities float32 (z, y, x))`` on the native grid of ``geometry``.

        images: one float32 array ``(z, y, x)`` per channel, in ``channel_names`` order, all of
        ``geometry.size_zyx``.
        """
        if len(images) != len(self.channel_names):
            raise HiennuError(f"expected {len(self.channel_names)} channel images ({', '.join(self.channel_names)}), "
                              f"got {len(images)}")
        for c, image in enumerate(images):
            if tuple(image.shape) != tuple(geometry.size_zyx):
                raise HiennuError(f"channel {c} ({self.channel_names[c]}) has shape {tuple(image.shape)}, "
                                  f"but the geometry's size (z, y, x) is {tuple(geometry.size_zyx)}")
            problem = nonfinite_problem(np.asarray(image))
            if problem:
                raise HiennuError(f"channel {c} ({self.channel_names[c]}) has {problem}; replace them before "
                                  f"predicting")
        mask, prob = self.predict_prepared([self.prepare(images, geometry)], [geometry], True)[0]
        return self.postprocess(mask, images, geometry.spacing_zyx, prob), prob

    def predict_files(self, adc: str | Path | sitk.Image, zadc: str | Path | sitk.Image) -> sitk.Image:
        """The lesion mask of one case, for scripts: ADC and ZADC as file paths or SimpleITK images.

        Returns a ``uint8`` SimpleITK image {0, 1} with the ADC's exact size, spacing, origin and
        direction. The two maps must lie on the same grid.
        """
        if len(self.channel_names) != 2:
            raise HiennuError(f"{self.name}: predict_files takes ADC and ZADC, but the model has "
                              f"{len(self.channel_names)} channels ({', '.join(self.channel_names)}); use predict_case")
        adc_k, zadc_k = adc_zadc_channels(self.channel_names, required=True, source=f"{self.name}'s dataset.json")
        images, geometries = [], []
        for label, item in (("ADC", adc), ("ZADC", zadc)):
            image = item if isinstance(item, sitk.Image) else read_sitk(item)
            if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
                raise HiennuError(f"{label}: expected a 3D image with one value per voxel")
            geometries.append(Geometry.from_image(image))
            images.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))
        diffs = geometries[0].differences(geometries[1])
        if diffs:
            raise HiennuError(f"ZADC lies on a different grid than ADC ({'; '.join(diffs)}); resample it onto the ADC's")
        ordered = [None, None]
        ordered[adc_k], ordered[zadc_k] = images  # the model's channel order, whatever it is
        mask, _ = self.predict_case(ordered, geometries[0])
        return geometries[0].apply_to(sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8)))

    def predict_folder(self, in_dir: str | Path, out_dir: str | Path, save_probabilities: bool = False,
                       probability_format: str = "npz", continue_prediction: bool = False,
                       queue_size: int = 4, case_ids: Sequence[str] | None = None) -> PredictionReport:
        """Predict every case found in ``in_dir`` (any layout) into ``out_dir/CASE.<ending>``.

        Cases with missing/mismatched channels or unreadable files are reported in the result's
        ``skipped`` and the rest are still predicted. ``continue_prediction`` skips cases whose
        outputs already exist and read back whole (:func:`output_is_complete`).
        ``save_probabilities`` also writes each case's probability map (``probability_format``:
        ``npz`` or ``image``). ``case_ids``: only these cases (one not found in ``in_dir`` raises).
        """
        in_dir, out_dir = Path(in_dir), Path(out_dir)
        if probability_format not in PROBABILITY_FORMATS:
            raise HiennuError(f"unknown probability format {probability_format!r}; choose {' or '.join(PROBABILITY_FORMATS)}")
        check_output_folder(in_dir, out_dir)
        cases = discover_input_cases(in_dir, self.channel_names)
        if case_ids is not None:
            missing = sorted(set(case_ids) - {c.case_id for c in cases})
            if missing:
                raise HiennuError(f"{in_dir}: no images of case(s) {', '.join(missing)}")
            cases = [c for c in cases if c.case_id in set(case_ids)]
        report = PredictionReport(out_dir)
        inputs = {f.resolve() for c in cases for f in c.files if f is not None}
        planned: dict[Path, str] = {}
        todo: list[InputCase] = []
        for case in cases:
            outputs = [out_dir / case.output_name()]
            if save_probabilities:
                outputs.append(probability_path(out_dir, case, probability_format))
            for o in outputs if not case.problem else ():  # e.g. A's map A_prob.mha and the mask of case A_prob
                other = planned.setdefault(o.resolve(), case.case_id)
                if other != case.case_id:
                    raise HiennuError(f"cases {other} and {case.case_id} would both write {o}; rename one of them "
                                      f"or save the probabilities as npz (--save-probabilities npz)")
            if case.problem:
                report.skipped[case.case_id] = case.problem
                logger.error("case %s skipped: %s", case.case_id, case.problem)
            elif any(o.resolve() in inputs for o in outputs):
                raise HiennuError(f"case {case.case_id}: output {outputs[0]} would overwrite an input file; "
                                  f"choose another output folder")
            elif continue_prediction and all(output_is_complete(o) for o in outputs):
                report.already_done.append(case.case_id)
            else:
                todo.append(case)
        if report.already_done:
            logger.info("%d case(s) already predicted in %s; skipped (--continue-prediction)",
                        len(report.already_done), out_dir)
        if todo:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._run_pipeline(todo, out_dir, save_probabilities, probability_format, report, max(1, queue_size))
        logger.info("%s", report.summary())
        return report

    def _run_pipeline(self, todo: list[InputCase], out_dir: Path, save_probabilities: bool, probability_format: str,
                      report: PredictionReport, queue_size: int) -> None:
        stop = threading.Event()
        read_q: queue.Queue = queue.Queue(maxsize=queue_size)
        write_q: queue.Queue = queue.Queue(maxsize=queue_size)
        crashes: list[BaseException] = []
        lock = threading.Lock()
        bar = progress(total=len(todo), desc="predicting", unit="case")

        def put(q: queue.Queue, item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                for case in todo:
                    if stop.is_set():
                        return
                    try:
                        images, geometry = read_case(case)
                        item = (case, self.prepare(images, geometry), geometry, None, images)
                    except (HiennuError, ValueError) as e:  # bad input for this case: report it, go on
                        item = (case, None, None, str(e) if isinstance(e, HiennuError) else f"case {case.case_id}: {e}",
                                None)
                    if not put(read_q, item):
                        return
            except BaseException as e:  # a bug, not bad input: stop everything and re-raise in the caller
                crashes.append(e)
                stop.set()
            finally:
                put(read_q, _DONE)

        def writer() -> None:
            try:
                while True:
                    try:
                        item = write_q.get(timeout=0.1)
                    except queue.Empty:
                        if stop.is_set():
                            return
                        continue
                    if item is _DONE:
                        return
                    case, geometry, mask, prob, images = item
                    try:
                        mask = self.postprocess(mask, images, geometry.spacing_zyx, prob)
                        geometry_out = Geometry(geometry.size_xyz, geometry.spacing_xyz, geometry.origin_xyz,
                                                geometry.direction, "8-bit unsigned integer")
                        write_image(mask.astype(np.uint8, copy=False), geometry_out, out_dir / case.output_name())
                        if save_probabilities:
                            write_probabilities(prob, geometry, probability_path(out_dir, case, probability_format))
                        with lock:
                            report.predicted.append(case.case_id)
                    except (OSError, WriteError) as e:  # this case's files: the next case may still be written
                        with lock:
                            report.failed[case.case_id] = f"cannot write into {out_dir}: {e}"
                        logger.error("case %s: cannot write into %s: %s", case.case_id, out_dir, e)
                    bar.update(1)
            except BaseException as e:
                crashes.append(e)
                stop.set()

        threads = [threading.Thread(target=reader, name="hiennu-reader", daemon=True),
                   threading.Thread(target=writer, name="hiennu-writer", daemon=True)]
        for t in threads:
            t.start()
        try:
            batch: list[tuple] = []
            finished = False
            while not finished and not stop.is_set():
                try:
                    item = read_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    finished = True
                else:
                    case, prepared, geometry, error, images = item
                    if error is not None:
                        with lock:
                            report.skipped[case.case_id] = error
                        logger.error("case %s skipped: %s", case.case_id,
                                     error.removeprefix(f"case {case.case_id}: "))  # named once
                        bar.update(1)
                    else:
                        batch.append((case, prepared, geometry, images))
                if batch and (len(batch) >= self.batch_size or finished):
                    results = self.predict_prepared([b[1] for b in batch], [b[2] for b in batch],
                                                    save_probabilities or self.postprocessing.needs_probabilities)
                    for (case, _, geometry, images), (mask, prob) in zip(batch, results):
                        if not put(write_q, (case, geometry, mask, prob, images)):
                            break
                    batch = []
            put(write_q, _DONE)
            threads[1].join()
        except BaseException:
            stop.set()
            raise
        finally:
            stop.set()
            for t in threads:
                t.join()
            bar.close()
        if crashes:
            raise crashes[0]
