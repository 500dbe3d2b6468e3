"""hiennu_ensemble (nnU-Net's nnUNetv2_ensemble): the mean of saved probability maps, by hand; the masks' grid and
file ending; what it reads (CASE_prob.npz, a fold's CASE.npz); its output through hiennu_apply_postprocessing;
and bad input, refused in one line with nothing written."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hiennu.cli import apply_postprocessing as apply_cli
from hiennu.cli import ensemble as cli
from hiennu.ensembling.ensemble_folders import ensemble_folders, probability_files
from hiennu.errors import HiennuError
from hiennu.inference.folder_prediction import write_probabilities
from hiennu.io.image import Geometry, read_image, write_image
from hiennu.io.probabilities import read_probability_map

GEO = Geometry((4, 3, 2), (1.0, 1.0, 3.0), (5.0, -2.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # x, y, z sizes
OTHER = Geometry((4, 3, 2), (1.0, 1.0, 2.0), (5.0, -2.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _maps(tmp_path: Path, values: dict[str, list[float]], cases=("c1", "c2"), geometry=GEO) -> list[Path]:
    """One folder per name; case k's map is values[name][k] everywhere, except voxel (0, 0, 0), which is 0."""
    dirs = []
    for name, per_case in values.items():
        d = tmp_path / name
        for case, v in zip(cases, per_case):
            prob = np.full(geometry.size_zyx, v, np.float32)
            prob[0, 0, 0] = 0.0
            write_probabilities(prob, geometry, d / f"{case}_prob.npz")
        dirs.append(d)
    return dirs


def test_the_mean_of_the_maps_by_hand_and_its_mask_at_one_half(tmp_path):
    dirs = _maps(tmp_path, {"a": [0.9, 0.2], "b": [0.2, 0.7], "c": [0.4, 0.6]})
    assert ensemble_folders(dirs, tmp_path / "out", save_probabilities=True) == ["c1", "c2"]
    for case, mean in (("c1", 0.5), ("c2", 0.5)):   # (0.9 + 0.2 + 0.4) / 3 and (0.2 + 0.7 + 0.6) / 3
        prob, geometry = read_probability_map(tmp_path / "out" / f"{case}_prob.npz", case)
        assert not geometry.differences(GEO)
        np.testing.assert_allclose(prob[0, 0, 1:], mean, atol=1e-6)
        assert prob[0, 0, 0] == 0.0
        mask, mask_geometry = read_image(tmp_path / "out" / f"{case}.mha", dtype=np.uint8)
        assert mask.dtype == np.uint8 and not mask_geometry.differences(GEO)
        assert np.array_equal(mask, (prob >= 0.5).astype(np.uint8))
    two = _maps(tmp_path / "two", {"a": [0.9, 0.2], "b": [0.2, 0.7]})
    ensemble_folders(two, tmp_path / "out2")
    assert read_image(tmp_path / "out2" / "c1.mha", dtype=np.uint8)[0][1, 1, 1] == 1   # 0.55
    assert read_image(tmp_path / "out2" / "c2.mha", dtype=np.uint8)[0][1, 1, 1] == 0   # 0.45
    assert not list((tmp_path / "out2").glob("*.npz"))   # no maps unless asked


def test_the_masks_take_the_ending_of_the_first_folders_masks_or_the_one_asked(tmp_path):
    dirs = _maps(tmp_path, {"a": [0.9, 0.9], "b": [0.9, 0.9]})
    write_image(np.zeros(GEO.size_zyx, np.uint8), GEO, dirs[0] / "c1.nii.gz")   # as hiennu_predict leaves it
    ensemble_folders(dirs, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c1.nii.gz", "c2.mha"]
    assert cli.main(["-i", *map(str, dirs), "-o", str(tmp_path / "nrrd"), "--file-ending", ".nrrd", "--save_npz",
                     "-q"]) == 0   # nnU-Net's spelling of --save-probabilities
    assert sorted(p.name for p in (tmp_path / "nrrd").iterdir()) == ["c1.nrrd", "c1_prob.npz", "c2.nrrd",
                                                                     "c2_prob.npz"]


def test_a_folder_is_read_as_predictions_or_as_a_folds_validation_never_mixing_the_two(tmp_path):
    """CASE_prob.npz in a prediction folder, CASE.npz in a fold's validation folder: a validation case named
    c1_prob is its own case there, not a second map of c1 (it once replaced c1's)."""
    val, pred = tmp_path / "val", tmp_path / "pred"
    for name in ("c1.npz", "c1_prob.npz", "c2.npz"):
        write_probabilities(np.full(GEO.size_zyx, 0.1, np.float32), GEO, val / name)
    for name in ("c1_prob.npz", "c1_prob_prob.npz"):
        write_probabilities(np.full(GEO.size_zyx, 0.1, np.float32), GEO, pred / name)
    (val / "notes.txt").write_text("not a map")
    assert probability_files(val) == {"c1": val / "c1.npz", "c1_prob": val / "c1_prob.npz", "c2": val / "c2.npz"}
    assert probability_files(pred) == {"c1": pred / "c1_prob.npz", "c1_prob": pred / "c1_prob_prob.npz"}


def test_its_output_feeds_a_judged_postprocessing_with_the_mean_maps(tmp_path):
    """hiennu_apply_postprocessing --probabilities OUT reads the mean maps hiennu_ensemble --save-probabilities
    wrote: a judge keeping a rule component when the mean probability over it is >= 0.5."""
    from hiennu.postprocessing.lesion_filter import FEATURES_WITH_PROBABILITY, ComponentFilter
    from hiennu.postprocessing.record import PostProcessing
    geometry = Geometry((8, 8, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    zadc = np.zeros(geometry.size_zyx, np.float32)
    zadc[1, 1:3, 1:3] = zadc[1, 5:7, 5:7] = -4.0            # two rule components
    adc = np.full(geometry.size_zyx, 1000.0, np.float32)
    images = tmp_path / "images"
    write_image(adc, geometry, images / "c1_0000.mha")
    write_image(zadc, geometry, images / "c1_0001.mha")
    maps = []
    for name, high in (("a", 0.9), ("b", 0.3)):
        prob = np.full(geometry.size_zyx, 0.05, np.float32)
        prob[1, 1:3, 1:3] = high        # first component: mean 0.6 -> kept
        prob[1, 5:7, 5:7] = 0.4         # second: 0.4 -> dropped
        write_probabilities(prob, geometry, tmp_path / name / "c1_prob.npz")
        maps.append(tmp_path / name)
    assert cli.main(["-i", *map(str, maps), "-o", str(tmp_path / "e"), "--save-probabilities", "-q"]) == 0
    judge = ComponentFilter((0.0,) * 4, (1.0,) * 4, (0.0, 0.0, 0.0, 20.0), -10.0, 0.5, FEATURES_WITH_PROBABILITY)
    record = tmp_path / "postprocessing.json"
    record.write_text(json.dumps({"chosen": PostProcessing(component_filter=judge, start_from_rule=True).to_dict()}))
    assert apply_cli.main(["-i", str(tmp_path / "e"), "-o", str(tmp_path / "pp"), "-pp", str(record), "--images",
                           str(images), "--probabilities", str(tmp_path / "e"), "-q"]) == 0
    mask = read_image(tmp_path / "pp" / "c1.mha", dtype=np.uint8)[0]
    expected = np.zeros(geometry.size_zyx, np.uint8)
    expected[1, 1:3, 1:3] = 1
    assert np.array_equal(mask, expected)


def _corrupt(dirs):
    (dirs[1] / "c2_prob.npz").write_bytes(b"not a zip")


def _nan(dirs):
    prob = np.full(GEO.size_zyx, 0.5, np.float32)
    prob[0, 1, 1] = np.nan
    write_probabilities(prob, GEO, dirs[1] / "c2_prob.npz")


def _npy(dirs):
    with open(dirs[1] / "c2_prob.npz", "wb") as f:   # a bare .npy saved under the .npz name
        np.save(f, np.zeros(GEO.size_zyx, np.float32))


def _short_grid(dirs):
    np.savez(dirs[1] / "c2_prob.npz", probabilities=np.zeros(GEO.size_zyx, np.float32), spacing_xyz=[1.0, 1.0],
             origin_xyz=[0.0, 0.0, 0.0], direction=np.eye(3).ravel())


def _deflate(dirs):
    """One byte of the compressed map flipped mid-stream: a broken deflate stream or a bad CRC-32."""
    path = dirs[1] / "c2_prob.npz"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("probabilities.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _missing(dirs):
    (dirs[1] / "c2_prob.npz").unlink()


def _extra(dirs):
    write_probabilities(np.zeros(GEO.size_zyx, np.float32), GEO, dirs[1] / "c3_prob.npz")


def _other_grid(dirs):
    write_probabilities(np.zeros(GEO.size_zyx, np.float32), OTHER, dirs[1] / "c2_prob.npz")


def _empty(dirs):
    for p in dirs[0].iterdir():
        p.unlink()


@pytest.mark.parametrize("breaking, message", [
    (_corrupt, r"case c2: .*b/c2_prob\.npz is not a probability map of hiennu_train --npz or hiennu_predict"),
    (_nan, r"case c2: .*b/c2_prob\.npz holds values outside \[0, 1\] or not finite"),
    (_npy, r"case c2: .*b/c2_prob\.npz is not a probability map .*File is not a zip file"),
    (_short_grid, r"case c2: .*b/c2_prob\.npz is not a probability map .*spacing_xyz has 2 values, not 3"),
    (_deflate, r"case c2: .*b/c2_prob\.npz is not a probability map of hiennu_train --npz"),
    (_missing, r"-i .*/b lacks case\(s\) c2; every folder must hold the maps of the same cases"),
    (_extra, r"-i .*/b has case\(s\) c3 that .*/a lacks"),
    (_other_grid, r"case c2: .*b/c2_prob\.npz lies on another grid than .*a/c2_prob\.npz \(spacing"),
    (_empty, r"-i .*/a: no probability maps \(CASE_prob\.npz: predict with hiennu_predict --save-probabilities npz\)"),
])
def test_bad_input_is_one_line_naming_the_case_and_file_and_nothing_is_written(tmp_path, capsys, breaking, message):
    dirs = _maps(tmp_path, {"a": [0.9, 0.2], "b": [0.2, 0.7]})
    breaking(dirs)
    assert cli.main(["-i", *map(str, dirs), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error: ")]) == 1
    assert any(line.startswith("error: ") and re.search(message, line) for line in err), err
    assert not (tmp_path / "out").exists()


def test_folders_that_would_be_overwritten_counted_twice_or_alone_are_refused(tmp_path):
    dirs = _maps(tmp_path, {"a": [0.9, 0.2], "b": [0.2, 0.7]})
    before = {p: p.read_bytes() for d in dirs for p in d.iterdir()}
    for out, message in ((dirs[0], "is the input folder"), (dirs[1] / "sub", "inside or around the input folder"),
                         (tmp_path, "inside or around the input folder")):
        with pytest.raises(HiennuError, match=f"-o .* {message} .*choose an output folder apart from every input"):
            ensemble_folders(dirs, out)
    with pytest.raises(HiennuError, match="is named twice; each folder would weigh double"):
        ensemble_folders([dirs[0], dirs[1], tmp_path / "a" / ".." / "a"], tmp_path / "out")
    with pytest.raises(HiennuError, match="an ensemble needs two or more folders of probability maps, got 1"):
        ensemble_folders(dirs[:1], tmp_path / "out")
    with pytest.raises(HiennuError, match=r"-i: .*nope is not a folder"):
        ensemble_folders([dirs[0], tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(HiennuError, match=r"--file-ending \.png: not an image ending hiennu writes"):
        ensemble_folders(dirs, tmp_path / "out", mask_ending=".png")
    assert {p: p.read_bytes() for d in dirs for p in d.iterdir()} == before
    assert not (tmp_path / "out").exists() and not (dirs[1] / "sub").exists()


def test_a_stray_map_in_a_prediction_folder_is_named(tmp_path, capsys):
    """One .npz not named CASE_prob.npz among a prediction folder's maps made the folder read as a fold's validation
    folder, and the error said the other folder lacked every case: the stray file is named instead."""
    dirs = _maps(tmp_path, {"a": [0.2, 0.8], "b": [0.6, 0.4]})
    (dirs[1] / "extra.npz").write_bytes((dirs[1] / "c1_prob.npz").read_bytes())
    assert cli.main(["-i", *map(str, dirs), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"-i {dirs[1]}: extra.npz is no map CASE_prob.npz of hiennu_predict --save-probabilities npz, as the " \
           f"folder's other 2 are; move it out of the folder" in err, err
    assert not (tmp_path / "out").exists()
