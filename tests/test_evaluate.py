"""Folder evaluation (summary, per-case CSV, bands, bad inputs), the CLI, and the report helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from hiennu.cli.evaluate import main as evaluate_main
from hiennu.errors import HiennuError
from hiennu.evaluation import report
from hiennu.evaluation.evaluate import evaluate_folders, per_case_csv_path, read_per_case_csv, summarize
from hiennu.evaluation.metrics import case_metrics
from hiennu.io.image import Geometry, read_image, write_image

SHAPE = (6, 16, 16)  # (z, y, x)
GEOMETRY = Geometry((16, 16, 6), (0.8, 0.8, 2.5), (1.0, -2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "8-bit unsigned integer")


def _mask(lo, hi):
    m = np.zeros(SHAPE, np.uint8)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return m


def _brain():
    adc = np.zeros(SHAPE, np.float32)
    adc[:, 2:14, 2:14] = 1300.0  # 6*12*12 = 864 brain voxels
    return adc


CASES = {
    # case: (reference, prediction)
    "case_a": (_mask((1, 4, 4), (4, 9, 9)), _mask((1, 5, 4), (4, 10, 9))),   # 75 voxels: 8.7% of brain
    "case_b": (_mask((2, 6, 6), (3, 8, 8)), _mask((2, 6, 6), (3, 8, 7))),    # 4 voxels: 0.46%
    "case_c": (np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),       # no lesion, none predicted
    "case_d": (_mask((0, 3, 3), (2, 6, 6)), np.zeros(SHAPE, np.uint8)),      # 18 voxels (2.1%), missed
}


@pytest.fixture
def folders(tmp_path):
    ref, pred, img = tmp_path / "labels", tmp_path / "preds", tmp_path / "images"
    for i, (case, (r, p)) in enumerate(CASES.items()):
        ending = ".mha" if i % 2 == 0 else ".nii.gz"
        write_image(r, GEOMETRY, ref / f"{case}{ending}")
        write_image(p, GEOMETRY, pred / f"{case}.mha")
        write_image(_brain(), GEOMETRY, img / f"{case}_0000.mha")
    return ref, pred, img


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---------------------------------------------------------------- summary statistics


def test_summarize_by_hand():
    s = summarize([1.0, 2.0, 3.0, float("nan"), None])
    assert (s["mean"], s["median"], s["std"], s["n"], s["n_undefined"]) == (2.0, 2.0, 1.0, 3, 2)
    assert 1.0 <= s["ci95_low"] < 2.0 < s["ci95_high"] <= 3.0
    assert summarize([1.0, 2.0, 3.0]) == summarize([1.0, 2.0, 3.0])  # seeded
    one = summarize([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and one["ci95_low"] == one["ci95_high"] == 0.5
    assert math.isnan(summarize([])["mean"])


# ---------------------------------------------------------------- folders


def test_evaluate_folders_summary_csv_round_trip(folders, tmp_path):
    ref, pred, img = folders
    out = tmp_path / "out" / "summary.json"
    summary = evaluate_folders(ref, pred, output_json=out, images_dir=img, num_processes=1)
    assert summary["num_cases"] == 4 and not summary["challenge_2023"]
    rows = {r["case_id"]: r for r in summary["per_case"]}
    for case, (r, p) in CASES.items():
        expected = case_metrics(r, p, GEOMETRY.spacing_zyx, brain_voxels=864)
        for key, value in expected.items():  # .nii.gz stores spacing as float32: compare to 1e-6
            got = rows[case][key]
            assert _same(got, value) or got == pytest.approx(value, rel=1e-6), (case, key)
    assert [rows[c]["band"] for c in CASES] == [">5%", "<1%", "no lesion", "1-5%"]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([rows[c]["dice"] for c in CASES]))
    assert summary["metrics"]["masd"]["n"] == 3 and summary["metrics"]["masd"]["n_undefined"] == 1
    assert summary["bands"][">5%"]["case_ids"] == ["case_a"]
    assert summary["bands"]["1-5%"]["metrics"]["dice"]["mean"] == 0.0

    # per-case CSV beside the summary reads back to the same rows
    back = read_per_case_csv(per_case_csv_path(out))
    assert per_case_csv_path(out).name == "summary_per_case.csv"
    assert len(back) == 4
    for row_back, row in zip(back, summary["per_case"]):
        assert row_back.keys() == row.keys()
        for key in row:
            assert _same(row_back[key], row[key]), key
    # the JSON is standard JSON (NaN written as null)
    text = out.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["metrics"]["dice"] == summary["metrics"]["dice"]
    assert loaded["per_case"][3]["masd"] is None
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_parallel_matches_serial(folders):
    ref, pred, _ = folders
    serial = evaluate_folders(ref, pred, num_processes=1)
    parallel = evaluate_folders(ref, pred, num_processes=2)
    assert serial["metrics"] == parallel["metrics"]


def test_without_images_no_bands_and_challenge_note(folders):
    ref, pred, _ = folders
    summary = evaluate_folders(ref, pred, num_processes=1, challenge_2023=True)
    assert summary["bands"] is None and "images" in summary["bands_note"]
    assert summary["challenge_2023"] and "2023 official scorer" in summary["note"]
    assert all(r["band"] is None and r["challenge_2023"] for r in summary["per_case"])
    correct = evaluate_folders(ref, pred, num_processes=1)
    # anisotropic grid (0.8, 0.8, 2.5 mm): the scorer's spacing order changes the surface metrics
    assert summary["metrics"]["masd"]["mean"] != pytest.approx(correct["metrics"]["masd"]["mean"])


def test_case_subset(folders):
    ref, pred, _ = folders
    (pred / "case_d.mha").unlink()
    summary = evaluate_folders(ref, pred, num_processes=1, case_ids=["case_a", "case_b"])
    assert [r["case_id"] for r in summary["per_case"]] == ["case_a", "case_b"]
    # a case named twice would count twice in every mean; none at all would score nothing
    with pytest.raises(HiennuError, match=r"case\(s\) case_a named twice in case_ids / --cases"):
        evaluate_folders(ref, pred, num_processes=1, case_ids=["case_a", "case_a", "case_b"])
    with pytest.raises(HiennuError, match="no case to score: case_ids is empty"):
        evaluate_folders(ref, pred, num_processes=1, case_ids=[], output_json=ref.parent / "s.json")
    assert not (ref.parent / "s.json").exists()


def test_official_bonbid_names(tmp_path):
    ref, pred, img = tmp_path / "3LABEL", tmp_path / "preds", tmp_path / "root"
    case = "MGHNICU_999-VISIT_01"
    r, p = CASES["case_a"]
    write_image(r.astype(np.float32), GEOMETRY, ref / f"{case}_lesion.mha")
    write_image(p, GEOMETRY, pred / f"{case}.mha")
    write_image(_brain(), GEOMETRY, img / "1ADC_ss" / f"{case}-ADC_ss.mha")
    summary = evaluate_folders(ref, pred, images_dir=img, num_processes=1)
    assert summary["per_case"][0]["case_id"] == case and summary["per_case"][0]["brain_voxels"] == 864


# ---------------------------------------------------------------- bad inputs


def test_missing_prediction_names_case_and_writes_nothing(folders, tmp_path):
    ref, pred, _ = folders
    (pred / "case_b.mha").unlink()
    out = tmp_path / "out" / "summary.json"
    with pytest.raises(HiennuError, match="case_b"):
        evaluate_folders(ref, pred, output_json=out, num_processes=1)
    assert not out.exists() and not per_case_csv_path(out).exists()


def test_mismatched_grid_names_case_and_difference(folders, tmp_path):
    ref, pred, _ = folders
    shifted = Geometry(GEOMETRY.size_xyz, (0.8, 0.8, 3.0), GEOMETRY.origin_xyz, GEOMETRY.direction)
    write_image(CASES["case_c"][1], shifted, pred / "case_c.mha")
    out = tmp_path / "summary.json"
    with pytest.raises(HiennuError, match=r"case_c.*spacing"):
        evaluate_folders(ref, pred, output_json=out, num_processes=2)
    assert not out.exists()


def test_non_binary_mask_names_file(folders):
    ref, pred, _ = folders
    write_image(CASES["case_a"][1] * 2, GEOMETRY, pred / "case_a.mha")
    with pytest.raises(HiennuError, match=r"preds/case_a\.mha.*not a binary mask"):
        evaluate_folders(ref, pred, num_processes=1)


def test_missing_folder_and_missing_images(folders, tmp_path):
    ref, pred, img = folders
    with pytest.raises(HiennuError, match="does not exist"):
        evaluate_folders(ref, tmp_path / "nowhere", num_processes=1)
    (img / "case_a_0000.mha").unlink()
    with pytest.raises(HiennuError, match="case_a"):
        evaluate_folders(ref, pred, images_dir=img, num_processes=1)


def test_duplicate_prediction_files(folders):
    ref, pred, _ = folders
    write_image(CASES["case_a"][1], GEOMETRY, pred / "case_a.nii.gz")
    with pytest.raises(HiennuError, match="two prediction files"):
        evaluate_folders(ref, pred, num_processes=1)


# ---------------------------------------------------------------- CLI


def test_cli_writes_default_summary_and_reports_errors(folders, capsys):
    ref, pred, img = folders
    assert evaluate_main(["-ref", str(ref), "-pred", str(pred), "-img", str(img), "-np", "1", "--quiet"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["num_cases"] == 4 and (pred / "summary_per_case.csv").is_file()
    (pred / "case_a.mha").unlink()
    assert evaluate_main(["-ref", str(ref), "-pred", str(pred), "-np", "1", "--quiet"]) == 1
    assert "case_a" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["same folder", "onto a reference", "onto a prediction", "into labels",
                                  "csv into images"])
def test_no_summary_lands_on_or_among_the_inputs(folders, case):
    ref, pred, img = folders
    before = {p: p.read_bytes() for folder in folders for p in folder.iterdir()}
    args = {"same folder": (ref, ref, None), "onto a reference": (ref, pred, ref / "case_a.mha"),
            "onto a prediction": (ref, pred, pred / "case_a.mha"), "into labels": (ref, pred, ref / "s.json"),
            "csv into images": (ref, pred, img / "s.json")}[case]
    words = {"same folder": "same folder", "onto a reference": "image name", "onto a prediction": "image name",
             "into labels": "into the -ref folder", "csv into images": "into the -img folder"}[case]
    with pytest.raises(HiennuError, match=words):
        evaluate_folders(args[0], args[1], output_json=args[2], images_dir=img, num_processes=1)
    assert {p: p.read_bytes() for folder in folders for p in folder.iterdir()} == before


# ---------------------------------------------------------------- report helpers


def _per_case():
    base = [0.2, 0.5, 0.4, 0.7, 0.6, 0.3, 0.8]
    better = [v + d for v, d in zip(base, [0.1, 0.05, 0.2, 0.02, 0.15, 0.12, 0.01])]
    bands = ["<1%", "<1%", "1-5%", ">5%", "1-5%", "<1%", ">5%"]

    def rows(values, masd_nan_case=None):
        return [{"case_id": f"c{i}", "dice": v, "masd": float("nan") if i == masd_nan_case else 10 * (1 - v),
                 "nsd": v, "band": b} for i, (v, b) in enumerate(zip(values, bands))]
    return {"TrainerDice": rows(base), "TrainerTversky": rows(better, masd_nan_case=2)}


def test_method_table_markdown_and_csv(tmp_path):
    per_case = _per_case()
    rows = report.write_method_table(per_case, tmp_path / "t.md", tmp_path / "t.csv",
                                     extra={"TrainerDice": {"epochs": [10, 20]}, "TrainerTversky": {"epochs": [30]}})
    dice = [r["dice"] for r in per_case["TrainerDice"]]
    assert rows[0]["dice_mean"] == pytest.approx(np.mean(dice))
    assert rows[0]["dice_std"] == pytest.approx(np.std(dice, ddof=1))
    assert rows[1]["masd_n"] == 6 and rows[0]["epochs_mean"] == 15.0
    md = (tmp_path / "t.md").read_text()
    assert f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}" in md and "MASD (mm)" in md and "epochs" in md
    csv_rows = read_per_case_csv(tmp_path / "t.csv")
    assert csv_rows[0]["method"] == "TrainerDice" and csv_rows[0]["dice_mean"] == pytest.approx(np.mean(dice))


def test_band_tables(tmp_path):
    rows = report.write_band_tables(_per_case(), tmp_path / "b.md", tmp_path / "b.csv")
    small = [r for r in rows if r["band"] == "<1%" and r["method"] == "TrainerDice"][0]
    assert small["num_cases"] == 3 and small["dice_mean"] == pytest.approx(np.mean([0.2, 0.5, 0.3]))
    text = (tmp_path / "b.md").read_text()
    assert "## lesion volume <1% of brain" in text and "no lesion" not in text


def test_wilcoxon_against_reference(tmp_path):
    per_case = _per_case()
    rows = report.wilcoxon_vs_reference(per_case, "TrainerDice")
    by_metric = {r["metric"]: r for r in rows}
    x = [r["dice"] for r in per_case["TrainerTversky"]]
    y = [r["dice"] for r in per_case["TrainerDice"]]
    assert by_metric["dice"]["p_value"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert by_metric["dice"]["n_pairs"] == 7 and by_metric["dice"]["median_difference"] > 0
    assert by_metric["masd"]["n_pairs"] == 6  # the NaN case is left out of the pairs
    same = report.wilcoxon_vs_reference({"a": per_case["TrainerDice"], "b": per_case["TrainerDice"]}, "a")
    assert same[0]["p_value"] == 1.0
    report.write_wilcoxon_table(rows, tmp_path / "w.md", tmp_path / "w.csv")
    assert "TrainerTversky" in (tmp_path / "w.md").read_text()
    with pytest.raises(ValueError, match="reference method"):
        report.wilcoxon_vs_reference(per_case, "TrainerNone")


def test_figures(tmp_path):
    import matplotlib.image as mpimg
    curves = {"TrainerDice": {"train loss": [1.0, 0.8, 0.6], "val Dice": [0.1, 0.3, float("nan")]},
              "TrainerTversky": {"train loss": [1.0, 0.7]}}
    report.plot_progress_curves(curves, tmp_path / "progress.png")
    ref, pred = CASES["case_a"]
    report.plot_slices({"case_a": _brain(), "case_c": _brain()}, {"case_a": ref, "case_c": CASES["case_c"][0]},
                       {"TrainerDice": {"case_a": pred, "case_c": CASES["case_c"][1]},
                        "TrainerTversky": {"case_a": ref, "case_c": CASES["case_c"][1]}},
                       tmp_path / "slices.png", spacing_zyx={"case_a": (2.5, 0.8, 0.8)})
    for name in ("progress.png", "slices.png"):
        image = mpimg.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert report.default_slice(ref) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- real data


def test_real_labels_against_perturbed_copies(real_bonbid_dir, tmp_path):
    from scipy import ndimage
    labels = sorted((real_bonbid_dir / "3LABEL").glob("*_lesion.mha"))[:3]
    pred_dir = tmp_path / "preds"
    cases = []
    for i, path in enumerate(labels):
        label, geometry = read_image(path)
        case = path.name[: -len("_lesion.mha")]
        perturbed = ndimage.binary_dilation(label != 0) if i % 2 else label != 0
        write_image(perturbed.astype(np.uint8), geometry, pred_dir / f"{case}.mha")
        cases.append(case)
    summary = evaluate_folders(real_bonbid_dir / "3LABEL", pred_dir, images_dir=real_bonbid_dir,
                               num_processes=2, case_ids=cases)
    rows = summary["per_case"]
    assert rows[0]["dice"] == 1.0 and rows[0]["masd"] == 0.0 and rows[0]["nsd"] == 1.0
    assert rows[1]["lesion_recall"] == 1.0 or math.isnan(rows[1]["lesion_recall"])  # dilation keeps every lesion
    assert all(r["brain_voxels"] > 10000 for r in rows)
    assert all(r["band"] in ("<1%", "1-5%", ">5%", "no lesion") for r in rows)
    if rows[1]["ref_voxels"]:
        assert rows[1]["dice"] < 1.0 and rows[1]["pred_voxels"] > rows[1]["ref_voxels"]
