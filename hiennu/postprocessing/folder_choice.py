"""Post-processing chosen on a folder of cross-validation masks, as ``nnUNetv2_determine_postprocessing -i -ref``.

nnU-Net chooses post-processing on any folder of predictions against a folder of references, not only on a
model it trained itself: a cross-validation folder of nnU-Net (``crossval_results_folds_0_1_2_3_4``), another
tool's out-of-fold masks, or hiennu's own masks predicted elsewhere. ``hiennu_determine_postprocessing -i FOLDER``
does the same with hiennu's candidates (:mod:`hiennu.postprocessing.selection`, line for line the code a model's
validation masks go through): the masks of ``FOLDER`` (``CASE<ending>``, each on its label's native grid, made
without post-processing) are scored against the raw dataset's labels, whose images the candidates read (the
ZADC rule, the ADC caps, the lesion filters).

The nested estimate needs to know which fold held each case out: the folds come from a ``splits_final.json``
(the dataset's own, or ``--splits`` for another tool's, nnU-Net's format), and every mask must be a validation
case of one fold. The record goes to ``FOLDER/postprocessing.json`` (nnU-Net's place) or ``-o``, and
``hiennu_apply_postprocessing -pp`` applies it to any masks. No size rule of a plans file is assumed: masks from
elsewhere were not made by hiennu's predictor.

Bad input (a folder without masks, a mask without a label or on another grid, a case in no fold, fewer than
two folds, probabilities missing for ``judged-rule``, an output among the dataset's files, over a mask or
over a file this command did not write, such as nnU-Net's own ``postprocessing.json``) is
one :class:`~hiennu.errors.HiennuError` line, raised before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.folders import INSIDE, IS, folder_relation
from hiennu.paths import DATASET_FILE, POSTPROCESSING_FILE
from hiennu.postprocessing.candidates import ALL_CANDIDATES, COMPONENT_SIZES, needs_probabilities
from hiennu.postprocessing.commands import folder_masks, probability_file, raw_dataset_of
from hiennu.postprocessing.record import postprocessing_from_record
from hiennu.postprocessing.selection import select_on_masks


CHOSEN_ON = "a folder of cross-validation masks (hiennu_determine_postprocessing -i)"


def folder_raw_dataset(dataset: str | int | None, reference: str | Path | None) -> Path:
    """The raw dataset the masks are scored against: ``-ref``'s parent (``-ref`` a dataset's ``labelsTr``), else
    ``-d``'s folder under ``$hiennu_raw``; both given, they must agree."""
    by_dataset = raw_dataset_of(dataset) if dataset is not None else None
    if reference is None:
        return by_dataset
    reference = Path(os.path.abspath(reference))  # "labelsTr", "." or "../labelsTr" by name; links kept as links
    if not reference.is_dir():
        raise HiennuError(f"-ref {reference}: folder of reference labels not found")
    raw_dir = reference.parent
    if reference.name != "labelsTr" or not (raw_dir / DATASET_FILE).is_file():
        raise HiennuError(f"-ref {reference}: must be the labelsTr folder of a raw dataset (dataset.json and imagesTr "
                          f"beside it), whose ADC and ZADC the candidates read; nnU-Net's gt_segmentations have no "
                          f"images beside them: give -d DATASET instead")
    if by_dataset is not None and by_dataset.resolve() != raw_dir.resolve():
        raise HiennuError(f"-ref {reference} and -d {dataset} ({by_dataset}) name different datasets; give one")
    return raw_dir


def apply_command(record: dict, record_path: Path) -> str:
    """The ``hiennu_apply_postprocessing`` line that applies ``record`` (stored at ``record_path``) to new masks, with
    ``--images`` / ``--probabilities`` where its candidate reads them."""
    post = postprocessing_from_record(record, str(record_path))
    return ("hiennu_apply_postprocessing -i MASKS -o OUTPUT -pp " + str(record_path)
            + (" --images IMAGES" if post.needs_images else "")
            + (" --probabilities PROBABILITIES" if post.needs_probabilities else ""))


def folds_of_cases(cases: list[str], fold_cases: dict[int, list[str]], splits_path: Path) -> dict[str, int]:
    """Case id -> the fold of ``fold_cases`` (fold -> validation cases) that holds it out; every case must be held
    out by one, and the cases must come from at least two folds (the nested estimate chooses on the others)."""
    fold_of_all = {case: fold for fold, held in fold_cases.items() for case in held}
    outside = [c for c in cases if c not in fold_of_all]
    if outside:
        raise HiennuError(f"case(s) {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} of -i are no validation "
                          f"case of any fold of {splits_path}; give the folds the masks were predicted on with "
                          f"--splits, or leave those masks out")
    fold_of = {c: fold_of_all[c] for c in cases}
    if len(set(fold_of.values())) < 2:
        raise HiennuError(f"the masks of -i are all held out by fold {next(iter(fold_of.values()))} of {splits_path}; "
                          f"choosing post-processing with a nested estimate needs the masks of two folds or more")
    return fold_of


def case_probability_files(prob_dir: Path, cases: list[str]) -> dict[str, list[Path]]:
    """Case id -> ``[its probability file]`` in ``prob_dir`` (:func:`~hiennu.postprocessing.commands.probability_file`);
    a case without one is an error naming it."""
    if not prob_dir.is_dir():
        raise HiennuError(f"--probabilities {prob_dir}: folder not found; give the folder of the masks' probabilities "
                          f"(CASE_prob.npz of hiennu_predict --save-probabilities npz, CASE.npz of hiennu_train --npz)")
    out = {}
    for case in cases:
        file = probability_file(prob_dir, case)
        if file is None:
            raise HiennuError(f"case {case}: no {case}_prob.npz or {case}.npz in {prob_dir}; --candidates judged-rule "
                              f"asks the network's probabilities (hiennu_predict --save-probabilities npz, hiennu_train "
                              f"--npz), or choose among --candidates all or cap-filter")
        out[case] = [file]
    return out


def output_problem(out_path: Path, masks: dict[str, Path], raw_dir: Path) -> str | None:
    """Why the record may not be written to ``out_path`` (over a mask, into the raw dataset, not a .json), or None."""
    if out_path.suffix.lower() != ".json":
        return f"-o {out_path}: the record is JSON; name a .json file"
    if out_path.exists() and not out_path.is_file():
        return f"-o {out_path}: is a folder; name a .json file"
    if any(out_path.resolve() == m.resolve() for m in masks.values()):
        return f"-o {out_path}: is one of the masks; name another file"
    if folder_relation(out_path.parent, raw_dir) in (IS, INSIDE):
        return f"-o {out_path}: lies in the raw dataset {raw_dir}; write the record elsewhere"
    if out_path.is_file() and not _is_hiennu_record(out_path):
        return (f"{out_path}: exists and is no record of hiennu_determine_postprocessing (nnU-Net keeps its own "
                f"postprocessing.json there); name another file with -o")
    return None


def _is_hiennu_record(path: Path) -> bool:
    """Whether ``path`` holds a record this command wrote with ``-i`` (so writing it again replaces nothing else: not
    nnU-Net's ``postprocessing.json``, a model's, nor ``hiennu_find_best_configuration``'s
    ``inference_information.json``, whose keys look alike)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("chosen_on") == CHOSEN_ON


def determine_folder_postprocessing(masks_dir: str | Path, raw_dir: str | Path, fold_cases: dict[int, list[str]],
                                    splits_path: str | Path, out_path: str | Path | None = None,
                                    probabilities_dir: str | Path | None = None,
                                    candidate_set: str = ALL_CANDIDATES, write: bool = True,
                                    details: dict | None = None) -> tuple[dict, Path]:
    """Choose post-processing on the masks of ``masks_dir`` against the labels of ``raw_dir``; return the record and
    where it goes (``out_path``, default ``masks_dir/postprocessing.json``), written there with ``write``.

    raw_dir: the raw dataset of the cases (``dataset.json``, ``imagesTr/``, ``labelsTr/``); fold_cases: fold -> its
    validation cases (from ``splits_path``, named in errors); probabilities_dir: the cases' probabilities for
    ``judged-rule`` (default: ``masks_dir``); details: filled as :func:`~hiennu.postprocessing.selection.select_on_cases`
    fills it, for the candidate table.
    """
    masks_dir, raw_dir, splits_path = Path(masks_dir), Path(raw_dir), Path(splits_path)
    if not (raw_dir / DATASET_FILE).is_file():
        raise HiennuError(f"{raw_dir}: no {DATASET_FILE}; give the raw dataset of the cases (-d, or -ref its labelsTr)")
    load_dataset_json(raw_dir)
    masks = folder_masks(masks_dir)
    out_path = Path(out_path) if out_path is not None else masks_dir / POSTPROCESSING_FILE
    problem = output_problem(out_path, masks, raw_dir) if write else None
    if problem:
        raise HiennuError(problem)
    fold_of = folds_of_cases(sorted(masks), fold_cases, splits_path)
    probabilities = None
    if needs_probabilities(candidate_set):
        probabilities = case_probability_files(Path(probabilities_dir or masks_dir), sorted(masks))
    record = select_on_masks(masks, fold_of, raw_dir, 0, {}, masks_dir, COMPONENT_SIZES, details, candidate_set,
                             probabilities)
    record["chosen_on"] = CHOSEN_ON
    record["splits"] = str(splits_path)
    if write:
        write_json(record, out_path)
    return record, out_path
