"""No command writes into a raw dataset's images or labels folders, and hiennu_evaluate's -o replaces only a
summary of its own: a helper replaced a dataset's labelsTr with predictions (apply, ensemble), wrote summaries into
labelsTr (evaluate with its folders the other way round) and replaced dataset.json and a fold's validation summary
(evaluate -o), each with rc 0."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from hiennu.cli import apply_postprocessing as apply_cli
from hiennu.cli import ensemble as ensemble_cli
from hiennu.cli import evaluate as evaluate_cli
from hiennu.cli import plot_overlay as overlay_cli
from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import check_output_folder, write_probabilities
from hiennu.io.folders import raw_data_folder
from hiennu.io.image import read_image

from test_postprocessing_folder import _folder_of_masks


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def dataset(tmp_path):
    raw, _, crossval, cases = _folder_of_masks(tmp_path, n=6, folds=2)
    for name, scale in (("probs", 1.0), ("probs2", 0.9)):
        for case in cases:
            mask, geometry = read_image(crossval / f"{case}.mha")
            write_probabilities(np.clip(mask * 0.8 * scale + 0.1, 0, 1), geometry, tmp_path / name / f"{case}_prob.npz")
    record = tmp_path / "pp.json"
    record.write_text(json.dumps({"chosen": {"min_component_voxels": 2}}))
    return raw, crossval, record, tmp_path


def test_raw_data_folder_is_found_from_inside_and_only_beside_a_dataset_json(tmp_path):
    (tmp_path / "Dataset001_X" / "labelsTr" / "sub").mkdir(parents=True)
    assert raw_data_folder(tmp_path / "Dataset001_X" / "labelsTr" / "sub") is None  # no dataset.json yet
    (tmp_path / "Dataset001_X" / "dataset.json").write_text("{}")
    assert raw_data_folder(tmp_path / "Dataset001_X" / "labelsTr" / "sub" / "new") == tmp_path / "Dataset001_X" / "labelsTr"
    assert raw_data_folder(tmp_path / "Dataset001_X" / "predictions") is None


@pytest.mark.parametrize("folder", ["labelsTr", "imagesTr"])
def test_masks_are_never_written_into_a_raw_datasets_images_or_labels(dataset, capsys, folder):
    raw, crossval, record, tmp_path = dataset
    target = raw / folder
    before = _digests(target)
    for cli, argv in ((apply_cli, ["-i", str(crossval), "-o", str(target), "-pp", str(record)]),
                      (ensemble_cli, ["-i", str(tmp_path / "probs"), str(tmp_path / "probs2"), "-o", str(target)]),
                      (overlay_cli, ["-i", str(tmp_path / "probs"), "-p", str(crossval), "-o", str(target / "png")])):
        assert cli.main(argv + ["-q"]) == 1, cli
        err = capsys.readouterr().err
        assert f"lies in {target.resolve()}, the {folder} folder of a raw dataset" in err, err
        assert len(err.strip().splitlines()) == 1
    with pytest.raises(HiennuError, match=f"the {folder} folder of a raw dataset"):
        check_output_folder(tmp_path / "probs", target)
    assert _digests(target) == before


def test_evaluate_writes_no_summary_into_a_dataset_and_replaces_only_its_own(dataset, capsys):
    raw, crossval, _, tmp_path = dataset
    labels = raw / "labelsTr"
    before = _digests(labels)
    assert evaluate_cli.main([str(crossval), str(labels), "-q"]) == 1  # the folders the other way round
    assert "were -ref and -pred given the other way round?" in capsys.readouterr().err
    assert _digests(labels) == before
    validation = tmp_path / "summary.json"
    validation.write_text(json.dumps({"metrics": {}, "per_case": [], "checkpoint": "checkpoint_final.pth"}))
    for foreign in (raw / "dataset.json", validation):
        content = foreign.read_bytes()
        assert evaluate_cli.main([str(labels), str(crossval), "-o", str(foreign), "-q"]) == 1
        assert f"{foreign}: the summary would replace this file, which is no summary of hiennu_evaluate" in \
            capsys.readouterr().err
        assert foreign.read_bytes() == content
    (crossval / "summary.json").write_text(validation.read_text())  # a fold's validation folder, no -o given
    assert evaluate_cli.main([str(labels), str(crossval), "-q"]) == 1
    assert f"{crossval / 'summary.json'}: the summary would replace this file" in capsys.readouterr().err
    (crossval / "summary.json").unlink()
    mine = tmp_path / "mine.json"
    assert evaluate_cli.main([str(labels), str(crossval), "-o", str(mine), "-q"]) == 0
    assert evaluate_cli.main([str(labels), str(crossval), "-o", str(mine), "-q", "--cases", "case00"]) == 0  # again
    assert json.loads(mine.read_text())["num_cases"] == 1
