"""hiennu_plot_overlay: the slice drawn, the crop and the Dice in the title by hand, one PNG per case, and bad input
refused in one line naming the case and file, with no picture written."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.image import imread

from hiennu.cli import plot_overlay as cli
from hiennu.errors import HiennuError
from hiennu.evaluation.overlay import overlay_case, overlay_slice, plot_overlays
from hiennu.io.image import Geometry, write_image

GEO = Geometry((20, 16, 6), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # x, y, z
OTHER = Geometry((20, 16, 6), (1.0, 1.0, 3.0), (5.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _case(folder, case: str, z_lesion: int, geometry=GEO) -> tuple[np.ndarray, np.ndarray]:
    """Images (brain in y 3-12, x 4-15), a reference with its lesion on slice z_lesion, a prediction half on it."""
    adc = np.zeros(GEO.size_zyx, np.float32)
    adc[:, 3:13, 4:16] = 1300.0
    zadc = np.zeros(GEO.size_zyx, np.float32)
    ref = np.zeros(GEO.size_zyx, np.uint8)
    ref[z_lesion, 5:9, 6:10] = 1
    pred = np.zeros(GEO.size_zyx, np.uint8)
    pred[z_lesion, 5:9, 6:8] = 1
    pred[0, 10, 12] = 1
    write_image(adc, geometry, folder / "images" / f"{case}_0000.mha")
    write_image(zadc, geometry, folder / "images" / f"{case}_0001.mha")
    write_image(ref, geometry, folder / "labels" / f"{case}.mha")
    write_image(pred, geometry, folder / "masks" / f"{case}.mha")
    return ref, pred


def test_the_slice_is_the_references_largest_else_the_predictions_else_the_middle():
    ref, pred = np.zeros((5, 4, 4), np.uint8), np.zeros((5, 4, 4), np.uint8)
    assert overlay_slice(pred, ref) == 2 and overlay_slice(pred) == 2
    pred[1, :2] = 1
    pred[3, 0, 0] = 1
    assert overlay_slice(pred) == 1 and overlay_slice(pred, ref) == 1
    ref[4, 0, :3] = 1
    assert overlay_slice(pred, ref) == 4


def test_the_case_is_cropped_to_the_brain_and_titled_with_its_dice(tmp_path):
    image = np.zeros((3, 10, 12), np.float32)
    image[:, 2:8, 3:11] = 1.0
    ref, pred = np.zeros(image.shape, np.uint8), np.zeros(image.shape, np.uint8)
    ref[1, 4:6, 5:7] = 1
    pred[1, 4:6, 5:6] = 1
    case = overlay_case("c", image, pred, (3.0, 1.0, 2.0), ref)
    assert case.image.shape == (10, 12)  # the box (2-8, 3-11) widened by 4 voxels and clipped to the plane
    assert case.title == "c, z = 1, ADC, Dice 0.667" and case.aspect == 0.5   # 2 * 2 / (4 + 2)
    assert case.reference.sum() == 4 and case.prediction.sum() == 2
    with pytest.raises(HiennuError, match=r"case c: the reference has shape \(2, 10, 12\), the image \(3, 10, 12\)"):
        overlay_case("c", image, pred, (3.0, 1.0, 2.0), ref[:2])


def test_one_png_per_case_with_and_without_references(tmp_path):
    _case(tmp_path, "a", 2)
    _case(tmp_path, "b", 4)
    assert cli.main(["-i", str(tmp_path / "images"), "-p", str(tmp_path / "masks"), "-r", str(tmp_path / "labels"),
                     "-o", str(tmp_path / "png"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "b.png"]
    picture = imread(tmp_path / "png" / "a.png")
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    assert plot_overlays(tmp_path / "images", tmp_path / "masks", tmp_path / "only_b", case_ids=["b"]) == ["b"]
    assert [p.name for p in (tmp_path / "only_b").iterdir()] == ["b.png"]
    write_image(np.zeros(GEO.size_zyx, np.float32), GEO, tmp_path / "masks" / "a_prob.mha")  # a probability image
    assert plot_overlays(tmp_path / "images", tmp_path / "masks", tmp_path / "again") == ["a", "b"]


def _nonbinary(tmp_path):
    write_image(np.full(GEO.size_zyx, 0.7, np.float32), GEO, tmp_path / "masks" / "b.mha")


def _other_grid(tmp_path):
    write_image(np.zeros(GEO.size_zyx, np.uint8), OTHER, tmp_path / "masks" / "b.mha")


def _no_image(tmp_path):
    (tmp_path / "images" / "b_0000.mha").unlink()
    (tmp_path / "images" / "b_0001.mha").unlink()


def _no_reference(tmp_path):
    (tmp_path / "labels" / "b.mha").unlink()


@pytest.mark.parametrize("breaking, message", [
    (_nonbinary, r"case b: prediction .*masks/b\.mha is not a binary mask \(values 0\.7\)"),
    (_other_grid, r"case b: .*masks/b\.mha lies on another grid than the case's image \(origin"),
    (_no_image, r"case b: no ADC image b_0000\.<ending> or BONBID-named ADC file in .*images"),
    (_no_reference, r"case b: no reference b\.<ending> or b_lesion\.<ending> in -r .*labels"),
])
def test_bad_input_is_one_line_naming_the_case_and_no_picture_is_written(tmp_path, capsys, breaking, message):
    _case(tmp_path, "a", 2)
    _case(tmp_path, "b", 4)
    breaking(tmp_path)
    assert cli.main(["-i", str(tmp_path / "images"), "-p", str(tmp_path / "masks"), "-r", str(tmp_path / "labels"),
                     "-o", str(tmp_path / "png")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (tmp_path / "png").exists()


def test_folders_and_options_that_cannot_work_are_refused(tmp_path):
    _case(tmp_path, "a", 2)
    args = (tmp_path / "images", tmp_path / "masks")
    with pytest.raises(HiennuError, match=r"-o .* is, holds or lies in the input folder .*masks \(-p\)"):
        plot_overlays(*args, tmp_path / "masks" / "png")
    with pytest.raises(HiennuError, match=r"-o .* is, holds or lies in the input folder"):
        plot_overlays(*args, tmp_path)
    with pytest.raises(HiennuError, match=r"--channel DWI: the images' channels are ADC, ZADC"):
        plot_overlays(*args, tmp_path / "png", channel="DWI")
    with pytest.raises(HiennuError, match=r"-p .*masks: no mask of case\(s\) zz"):
        plot_overlays(*args, tmp_path / "png", case_ids=["zz"])
    with pytest.raises(HiennuError, match=r"-r .*nope: folder not found"):
        plot_overlays(*args, tmp_path / "png", labels_dir=tmp_path / "nope")
    assert not (tmp_path / "png").exists() and not (tmp_path / "masks" / "png").exists()
    assert plot_overlays(*args, tmp_path / "png", channel="ZADC") == ["a"]   # an all-zero channel still draws


@pytest.mark.parametrize("flat", [True, False])
def test_bonbids_own_names_are_read_as_hiennu_predict_and_hiennu_evaluate_read_them(tmp_path, flat):
    _case(tmp_path, "MGHNICU_010-VISIT_01", 2)
    case = "MGHNICU_010-VISIT_01"
    release = tmp_path / "release"
    adc_dir, zadc_dir = (release, release) if flat else (release / "1ADC_ss", release / "2Z_ADC")
    adc_dir.mkdir(parents=True, exist_ok=True)
    zadc_dir.mkdir(parents=True, exist_ok=True)
    (tmp_path / "images" / f"{case}_0000.mha").rename(adc_dir / f"{case}-ADC_ss.mha")
    (tmp_path / "images" / f"{case}_0001.mha").rename(zadc_dir / f"Zmap_{case}-ADC_smooth2mm_clipped10.mha")
    (tmp_path / "labels" / f"{case}.mha").rename(tmp_path / "labels" / f"{case}_lesion.mha")
    for channel in ("ADC", "ZADC"):
        out = tmp_path / f"png_{channel}"
        assert plot_overlays(release, tmp_path / "masks", out, tmp_path / "labels", channel=channel) == [case]
        assert (out / f"{case}.png").is_file()
