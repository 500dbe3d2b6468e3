"""The predictor: ensemble and TTA arithmetic, folder prediction in every layout, native geometry,
bad inputs, default-model selection, the ZADC baseline and the challenge interface."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from hiennu.cli import predict as predict_cli
from hiennu.cli import predict_challenge as challenge_cli
from hiennu.errors import HiennuError
from hiennu.inference.baseline import ZadcThresholdBaseline
from hiennu.inference.challenge import CHALLENGE_OUTPUT, run_challenge
from hiennu.inference.ensemble import FoldEnsemble, mirror_combinations
from hiennu.inference.model_registry import resolve_model, set_default_model
from hiennu.inference.model_zip import export_model_zip
from hiennu.inference.predictor import Predictor, tta_mirror_axes
from hiennu.io.image import Geometry, read_image, write_image
from hiennu.postprocessing.components import remove_small_components
from helpers import GEOM, case_arrays, make_model_dir, tiny_plans


def _write_case(folder: Path, case: str, ending: str = ".mha", geometry: Geometry = GEOM, seed: int = 0) -> None:
    for c, array in enumerate(case_arrays(geometry, seed)):
        write_image(array, geometry, folder / f"{case}_{c:04d}{ending}")


def _sitk_geometry(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), img.GetPixelIDTypeAsString()


# ------------------------------------------------------------------------------------ ensemble arithmetic

class _Identity(nn.Module):
    """Logits = channel 0 (mirror-equivariant)."""

    def forward(self, x):
        return x[:, :1] * 1.0


class _Ramp(nn.Module):
    """Logits = a fixed ramp along x, whatever the input (not mirror-equivariant)."""

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=torch.float32) - 2.0
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_mirror_combinations():
    assert mirror_combinations([]) == [()]
    assert mirror_combinations([2]) == [(), (2,)]
    assert len(mirror_combinations([0, 1, 2])) == 8 and mirror_combinations([0, 1, 2])[0] == ()
    with pytest.raises(ValueError):
        mirror_combinations([3])


def test_ensemble_averages_sigmoids_over_folds_and_flips():
    x = torch.randn(2, 2, 4, 4, 5)
    no_tta = FoldEnsemble([_Identity()], mirror_axes=()).predict_probabilities(x)
    torch.testing.assert_close(no_tta, torch.sigmoid(x[:, 0]))
    tta = FoldEnsemble([_Identity()], mirror_axes=(0, 1, 2)).predict_probabilities(x)
    torch.testing.assert_close(tta, no_tta)  # an equivariant network is unchanged by mirroring
    ramp = torch.arange(5, dtype=torch.float32) - 2.0
    flipped = FoldEnsemble([_Ramp()], mirror_axes=(2,)).predict_probabilities(x)
    expected = (torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 2
    torch.testing.assert_close(flipped, expected.expand(2, 4, 4, 5))
    two = FoldEnsemble([_Identity(), _Ramp()], mirror_axes=()).predict_probabilities(x)
    torch.testing.assert_close(two, (torch.sigmoid(x[:, 0]) + torch.sigmoid(ramp).expand(2, 4, 4, 5)) / 2)


def test_tta_axes_follow_plans():
    config = tiny_plans().configuration()
    assert tta_mirror_axes(config) == (0, 1, 2)  # trained without mirroring (the paper)
    config.augmentation.p_mirror, config.augmentation.mirror_axes = 0.5, [2, 1]
    assert tta_mirror_axes(config) == (1, 2)


def test_remove_small_components_26_connected():
    m = np.zeros((5, 5, 5), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1  # corner-touching pair: one component of 2
    m[4, 4, 4] = 1
    assert remove_small_components(m, 2).sum() == 2
    assert remove_small_components(m, 3).sum() == 0
    assert remove_small_components(m, 0).sum() == 3


# ------------------------------------------------------------------------------------ one case

def test_predict_case_shapes_and_threshold(tmp_path):
    predictor = Predictor.from_model_dir(make_model_dir(tmp_path), folds=[0, 1], device="cpu")
    assert predictor.folds == ["0", "1"] and predictor.ensemble.passes_per_case == 16
    mask, prob = predictor.predict_case(case_arrays(), GEOM)
    assert mask.shape == prob.shape == GEOM.size_zyx
    assert mask.dtype == np.uint8 and prob.dtype == np.float32
    assert np.array_equal(mask, (prob >= 0.5).astype(np.uint8))
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    with pytest.raises(HiennuError, match="expected 2 channel images"):
        predictor.predict_case(case_arrays()[:1], GEOM)


def test_nearest_and_linear_prediction_interpolation_differ(tmp_path):
    lin = Predictor.from_model_dir(make_model_dir(tmp_path / "a", interpolation="linear"), device="cpu",
                                   use_mirroring=False)
    near = Predictor.from_model_dir(make_model_dir(tmp_path / "b", interpolation="nearest"), device="cpu",
                                    use_mirroring=False)
    _, p_lin = lin.predict_case(case_arrays(), GEOM)
    _, p_near = near.predict_case(case_arrays(), GEOM)
    # nearest: every native value is one of the grid's values; linear blends neighbours
    assert len(np.unique(p_near)) <= 16 * 16 * 8 and len(np.unique(p_lin)) > len(np.unique(p_near))


def test_weights_that_do_not_fit_the_plans(tmp_path):
    model_dir = make_model_dir(tmp_path, folds=(0,), checkpoint="checkpoint_best.pth")
    ckpt = torch.load(model_dir / "fold_0" / "checkpoint_best.pth", weights_only=True)
    ckpt["network_weights"].pop(next(iter(ckpt["network_weights"])))
    torch.save(ckpt, model_dir / "fold_0" / "checkpoint_best.pth")
    with pytest.raises(HiennuError, match="fold 0: the weights do not fit"):
        Predictor.from_model_dir(model_dir, device="cpu")
    with pytest.raises(HiennuError, match=r"no checkpoint_final.pth.*checkpoints present: checkpoint_best.pth"):
        Predictor.from_model_dir(model_dir, checkpoint="checkpoint_final.pth", device="cpu")


def test_zip_predicts_like_the_folder(tmp_path):
    model_dir = make_model_dir(tmp_path / "results")
    ref = Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False)
    from_zip = Predictor.from_zip(export_model_zip(model_dir, tmp_path / "m.zip"), device="cpu", use_mirroring=False)
    half = Predictor.from_zip(export_model_zip(model_dir, tmp_path / "h.zip", half=True), device="cpu",
                              use_mirroring=False)
    m0, p0 = ref.predict_case(case_arrays(), GEOM)
    m1, p1 = from_zip.predict_case(case_arrays(), GEOM)
    _, p2 = half.predict_case(case_arrays(), GEOM)
    assert np.array_equal(m0, m1) and np.array_equal(p0, p1)
    assert np.abs(p2 - p0).max() < 1e-2


# ------------------------------------------------------------------------------------ folders

@pytest.mark.parametrize("ending", [".mha", ".nii.gz", ".nii", ".nrrd"])
def test_predict_folder_keeps_native_geometry(tmp_path, ending):
    inp, out = tmp_path / "in", tmp_path / "out"
    geometries = {"a": GEOM, "b": Geometry((12, 14, 5), (2.0, 2.0, 6.0), (5.0, -3.0, 0.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))}
    for case, geometry in geometries.items():
        _write_case(inp, case, ending, geometry)
    before = {p: p.stat().st_mtime_ns for p in inp.iterdir()}
    predictor = Predictor.from_model_dir(make_model_dir(tmp_path / "m"), device="cpu", use_mirroring=False)
    report = predictor.predict_folder(inp, out, save_probabilities=True)
    assert report.ok and sorted(report.predicted) == ["a", "b"]
    for case in geometries:
        size, spacing, origin, direction, ptype = _sitk_geometry(out / f"{case}{ending}")
        ref = _sitk_geometry(inp / f"{case}_0000{ending}")
        if ending.startswith(".nii"):  # NIfTI stores the direction as a float32 quaternion: ~1e-9 round-off
            assert (size, spacing) == ref[:2] and np.allclose(origin + direction, ref[2] + ref[3], rtol=0, atol=1e-6)
        else:
            assert (size, spacing, origin, direction) == ref[:4]
        assert ptype == "8-bit unsigned integer"
        probs = np.load(out / f"{case}_prob.npz")["probabilities"]
        mask, _ = read_image(out / f"{case}{ending}", dtype=None)
        assert probs.shape == mask.shape and np.array_equal(mask, (probs >= 0.5).astype(np.uint8))
    assert {p: p.stat().st_mtime_ns for p in inp.iterdir()} == before  # inputs untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bad_cases_are_skipped_and_the_rest_predicted(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_case(inp, "good")
    write_image(case_arrays()[0], GEOM, inp / "lonely_0000.mha")
    _write_case(inp, "shifted")
    moved = Geometry(GEOM.size_xyz, GEOM.spacing_xyz, (0.0, 0.0, 50.0), GEOM.direction)
    write_image(case_arrays()[1], moved, inp / "shifted_0001.mha")
    model_dir = make_model_dir(tmp_path / "m", folds=(0,))
    code = predict_cli.main(["-i", str(inp), "-o", str(out), "-m", str(model_dir), "--disable-tta", "-q"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.mha"]
    err = capsys.readouterr().err
    assert "case shifted skipped: shifted_0001.mha lies on a different grid" in err, err  # the case named once
    report = Predictor.from_model_dir(model_dir, device="cpu", use_mirroring=False).predict_folder(inp, tmp_path / "o2")
    assert report.predicted == ["good"]
    assert "lonely_0000.mha" in report.skipped["lonely"] and "missing channel" in report.skipped["lonely"]
    assert "shifted_0001.mha lies on a different grid" in report.skipped["shifted"]
    assert "origin" in report.skipped["shifted"]


def test_output_folder_inside_or_equal_to_input_is_refused(tmp_path):
    inp = tmp_path / "in"
    _write_case(inp, "a")
    predictor = ZadcThresholdBaseline()
    for out in (inp, inp / "preds"):
        with pytest.raises(HiennuError, match="choose an output folder outside it"):
            predictor.predict_folder(inp, out)
    assert sorted(p.name for p in inp.iterdir()) == ["a_0000.mha", "a_0001.mha"]


def test_continue_prediction_skips_written_cases(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_case(inp, "a")
    _write_case(inp, "b", seed=1)
    predictor = ZadcThresholdBaseline()
    predictor.predict_folder(inp, out)
    os.remove(out / "b.mha")
    stamp = (out / "a.mha").stat().st_mtime_ns
    report = predictor.predict_folder(inp, out, continue_prediction=True)
    assert report.already_done == ["a"] and report.predicted == ["b"]
    assert (out / "a.mha").stat().st_mtime_ns == stamp


def test_probabilities_as_image(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_case(inp, "a", ".nii.gz")
    ZadcThresholdBaseline().predict_folder(inp, out, save_probabilities=True, probability_format="image")
    prob, geometry = read_image(out / "a_prob.nii.gz")
    assert geometry.size_xyz == GEOM.size_xyz and not geometry.differences(GEOM)


# ------------------------------------------------------------------------------------ baseline

def test_zadc_baseline_is_the_rule():
    adc, zadc = case_arrays()
    mask, prob = ZadcThresholdBaseline().predict_case([adc, zadc], GEOM)
    assert np.array_equal(mask, ((zadc < -2) & (adc != 0)).astype(np.uint8))
    assert mask[:, :2].sum() == 0 and np.array_equal(prob, mask.astype(np.float32))
    cleaned, _ = ZadcThresholdBaseline(min_component_voxels=10).predict_case([adc, zadc], GEOM)
    assert np.array_equal(cleaned, remove_small_components(mask, 10)) and cleaned.sum() < mask.sum()


def test_zadc_baseline_on_real_cases_matches_the_design_figure(real_bonbid_dir, tmp_path):
    out = tmp_path / "out"
    report = ZadcThresholdBaseline().predict_folder(real_bonbid_dir, out)
    assert report.ok and len(report.predicted) == 37
    dice = []
    for label_path in sorted((real_bonbid_dir / "3LABEL").iterdir()):
        label, _ = read_image(label_path)
        pred, _ = read_image(out / (label_path.name.replace("_lesion.mha", ".mha")))
        g, p = label > 0, pred > 0
        dice.append(1.0 if not g.any() and not p.any() else 2 * (g & p).sum() / (g.sum() + p.sum()))
    assert abs(np.mean(dice) - 0.466) < 0.0015  # the design card's figure for this rule on these cases


# ------------------------------------------------------------------------------------ real geometry

def test_real_oblique_anisotropic_cases_round_trip(real_bonbid_dir, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    chosen = ["MGHNICU_010-VISIT_01", "MGHNICU_234-VISIT_01", "MGHNICU_290-VISIT_01"]  # 4 mm slices; oblique
    for case in chosen:
        for sub, pattern in (("1ADC_ss", f"{case}-ADC_ss.mha"), ("2Z_ADC", f"Zmap_{case}-ADC_smooth2mm_clipped10.mha")):
            (inp / pattern).symlink_to(real_bonbid_dir / sub / pattern)
    predictor = Predictor.from_model_dir(make_model_dir(tmp_path / "m", folds=(0,)), device="cpu",
                                         use_mirroring=False)
    report = predictor.predict_folder(inp, tmp_path / "out")
    assert report.ok and sorted(report.predicted) == chosen
    directions = set()
    for case in chosen:
        ref = _sitk_geometry(real_bonbid_dir / "1ADC_ss" / f"{case}-ADC_ss.mha")
        got = _sitk_geometry(tmp_path / "out" / f"{case}.mha")
        assert got[:4] == ref[:4] and got[4] == "8-bit unsigned integer"
        directions.add(ref[3] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    assert False in directions  # at least one oblique case among them


# ------------------------------------------------------------------------------------ model choice

def test_default_model_selection(hiennu_roots, tmp_path):
    results = hiennu_roots["hiennu_results"]
    with pytest.raises(HiennuError, match="no trained model under"):
        resolve_model()
    first = make_model_dir(results, trainer="TrainerA")
    assert resolve_model() == first
    second = make_model_dir(results, trainer="TrainerB", folds=(0,))
    with pytest.raises(HiennuError, match=r"2 trained models(.|\n)*-d Dataset001_Tiny -tr TrainerA -c 3d_fullres"
                                          r"(.|\n)*-tr TrainerB"):
        resolve_model()
    assert resolve_model(dataset="Tiny", trainer="TrainerB") == second
    assert resolve_model(dataset=1, trainer="TrainerA", configuration="3d_fullres") == first
    with pytest.raises(HiennuError, match="add -tr/-c"):
        resolve_model(dataset="Tiny")
    with pytest.raises(HiennuError, match="no trained model matches -d Tiny -tr Nope"):
        resolve_model(dataset="Tiny", trainer="Nope")
    set_default_model(second)
    assert resolve_model() == second
    zip_path = export_model_zip(first, tmp_path / "m.zip")
    assert resolve_model(zip_path) == zip_path


def test_cli_uses_default_model_and_baseline(hiennu_roots, tmp_path):
    inp = tmp_path / "in"
    _write_case(inp, "a")
    make_model_dir(hiennu_roots["hiennu_results"], folds=(0,))
    assert predict_cli.main(["-i", str(inp), "-o", str(tmp_path / "o1"), "--disable-tta", "-q"]) == 0
    assert (tmp_path / "o1" / "a.mha").is_file()
    assert predict_cli.main(["-i", str(inp), "-o", str(tmp_path / "o2"), "--baseline", "zadc", "-q"]) == 0
    assert predict_cli.main(["-i", str(inp), "-o", str(inp), "--baseline", "zadc", "-q"]) == 1


# ------------------------------------------------------------------------------------ challenge

def _challenge_input(root: Path) -> Path:
    adc_dir = root / "images" / "skull-stripped-adc-brain-mri"
    zadc_dir = root / "images" / "z-score-adc"
    adc, zadc = case_arrays()
    write_image(adc, GEOM, adc_dir / "5b1e0c3a-adc.mha")
    write_image(zadc, GEOM, zadc_dir / "77c0aa19-zadc.mha")
    return adc_dir / "5b1e0c3a-adc.mha"


def test_challenge_interface(tmp_path):
    adc_file = _challenge_input(tmp_path / "input")
    predictor = Predictor.from_model_dir(make_model_dir(tmp_path / "m", folds=(0,)), device="cpu", use_mirroring=False)
    out = run_challenge(predictor, tmp_path / "input", tmp_path / "output")
    assert out == tmp_path / "output" / CHALLENGE_OUTPUT
    got, ref = _sitk_geometry(out), _sitk_geometry(adc_file)
    assert got[:4] == ref[:4] and got[4] == "8-bit unsigned integer"
    code = challenge_cli.main(["--input", str(tmp_path / "input"), "--output", str(tmp_path / "out2"),
                               "--baseline", "zadc", "-q"])
    assert code == 0
    mask, _ = read_image(tmp_path / "out2" / CHALLENGE_OUTPUT)
    adc, zadc = case_arrays()
    assert np.array_equal(mask, ((zadc < -2) & (adc != 0)).astype(np.float32))
    write_image(case_arrays()[0], GEOM, tmp_path / "input" / "images" / "skull-stripped-adc-brain-mri" / "second.mha")
    with pytest.raises(HiennuError, match=r"exactly one case, one image in each of images/skull-stripped-adc-brain-mri/ "
                                          r"and images/z-score-adc/; found 2 and 1 \("):
        run_challenge(ZadcThresholdBaseline(), tmp_path / "input", tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_a_case_whose_mask_cannot_be_written_is_reported_and_the_next_case_is_still_written(tmp_path, monkeypatch):
    """A full disk for one case's mask fails that case (reported, named), not the whole folder: the cases after it
    are still predicted and written (the writer caught OSError only; the atomic writer now says which file)."""
    import errno

    import hiennu.io.atomic as atomic
    from hiennu.io.cases import channel_file_name
    for i, case in enumerate(["a", "b", "c"]):
        for k, array in enumerate(case_arrays(seed=i)):
            write_image(array, GEOM, tmp_path / "in" / channel_file_name(case, k, ".mha"))
    predictor = Predictor.from_model_dir(make_model_dir(tmp_path / "m"), device="cpu", use_mirroring=False)
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "b.mha":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    report = predictor.predict_folder(tmp_path / "in", tmp_path / "out")
    assert sorted(report.predicted) == ["a", "c"] and list(report.failed) == ["b"]
    assert f"{tmp_path / 'out' / 'b.mha'}: cannot be written (No space left on device)" in report.failed["b"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mha", "c.mha"]
