"""hiennu.postprocessing as a stage of its own: the honesty of the nested estimate, one home per convention,
hiennu_determine_postprocessing and hiennu_apply_postprocessing (bad input included)."""

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import hiennu
from hiennu.cli import apply_postprocessing as apply_cli
from hiennu.cli import determine_postprocessing as determine_cli
from hiennu.cli import predict as predict_cli
from hiennu.errors import HiennuError
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, read_image, write_image
from hiennu.masks import RULE_THRESHOLD, rule_mask
from hiennu.paths import ModelFolder, use_roots
from hiennu.plans import save_plans
from hiennu.postprocessing.record import PostProcessing, apply_postprocessing, postprocessing_from_record, with_size_rule
from hiennu.postprocessing.rule_reference import rule_cases
from hiennu.postprocessing.selection import (CaseImages, all_candidates, load_cases, nested_choices, select_on_cases,
                                             select_postprocessing)

from helpers import tiny_plans

PACKAGE = Path(hiennu.__file__).resolve().parent


# ------------------------------------------------------------------------------------------ synthetic cases

def _case(rng: np.random.Generator, i: int, shape=(8, 22, 20)) -> tuple[np.ndarray, ...]:
    """(pred, ref, adc, zadc) of one case: a lesion on most cases, scattered false positives, a rim speck."""
    z, y, x = np.indices(shape)
    brain = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (min(shape[1:]) / 2.3) ** 2
    adc = np.where(brain, rng.normal(1400, 250, shape), 0).astype(np.float32)
    ref = np.zeros(shape, np.uint8)
    if i % 4:
        s = 1 + i % 3
        ref[2:2 + s, 8:8 + 2 * s, 9:9 + s + 1] = 1
        adc[ref > 0] = rng.normal(700, 150, int(ref.sum()))
    zadc = np.where(brain, (adc - 1400) / 250 + rng.normal(0, 0.6, shape), 0).astype(np.float32)
    pred = ref.copy()
    pred[(rng.random(shape) < 0.01) & brain] = 1
    if i % 3 == 0:
        pred[5:7, 3:5, 10:13] = 1
    return pred, ref, adc, zadc


def _cases(n=15, folds=5, seed=7):
    rng = np.random.default_rng(seed)
    cases, fold_of = {}, {}
    for i in range(n):
        pred, ref, adc, zadc = _case(rng, i)
        cases[f"case{i:02d}"] = CaseImages(pred, ref != 0, zadc, adc, (2.0 + i % 3, 1.0, 1.1))
        fold_of[f"case{i:02d}"] = i % folds
    return cases, fold_of


def _as_dicts(options):
    return [p.to_dict() for p in options]


# ------------------------------------------------------------------------------------------ honesty

def test_a_held_out_fold_never_reaches_its_own_nested_choice():
    """Replace every array of fold 0's cases (prediction, label, ADC, ZADC, spacing) with something else: the
    caps, filter fits (weights, feature scaling, threshold), candidates and choice of fold 0 stay exactly
    the same, while the pooled candidates (which see every case) change, so the change is one they would see."""
    cases, fold_of = _cases()
    before = nested_choices(cases, fold_of)
    rng = np.random.default_rng(99)
    changed = dict(cases)
    for c in [c for c in cases if fold_of[c] == 0]:
        pred, ref, adc, zadc = _case(rng, 1, cases[c].pred.shape)
        changed[c] = CaseImages(np.roll(pred, 2, axis=2), ref != 0, zadc - 1.0, adc * 1.7, (5.0, 0.7, 0.7))
    after = nested_choices(changed, fold_of)
    assert _as_dicts(after[0].options) == _as_dicts(before[0].options)
    assert after[0].chosen == before[0].chosen and after[0].held_out == before[0].held_out
    assert len(before[0].options) > 20  # caps and lesion filters among them
    assert _as_dicts(all_candidates(changed, list(changed))) != _as_dicts(all_candidates(cases, list(cases)))
    assert any(_as_dicts(after[f].options) != _as_dicts(before[f].options) for f in range(1, 5))


def test_the_record_says_how_many_candidates_it_chose_among(tmp_path):
    raw, model = _write_model(tmp_path, folds=3)
    record = select_postprocessing(model, raw, [0, 1, 2])
    assert record["num_candidates"] == len(record["candidates"]) > 20
    assert set(record["nested"]["num_candidates"]) == {"0", "1", "2"}
    assert all(n > 1 for n in record["nested"]["num_candidates"].values())


def test_the_cap_filter_set_is_one_recipe_against_none_fitted_on_the_cases_of_the_choice():
    """--candidates cap-filter: no post-processing, then the cap at the 99.5th percentile of exactly these cases'
    lesion ADC followed by the lesion filter fitted after it, with the plans' size rule; nested, each fold's recipe is
    derived without it, and a held-out fold still never reaches its own choice."""
    cases, fold_of = _cases()
    for c in cases.values():  # false positives dark enough to pass the cap, so that a filter is fitted after it
        c.adc[(c.pred > 0) & ~c.ref] = 760.0
    ids = sorted(cases)
    options = all_candidates(cases, ids, min_component_voxels=3, candidate_set="cap-filter")
    lesion_adc = np.concatenate([cases[c].adc[cases[c].ref] for c in ids])
    assert len(options) == 2 and options[0].is_identity
    recipe = options[1]
    assert recipe.max_adc == float(np.round(np.quantile(lesion_adc, 0.995)))
    assert recipe.component_filter is not None and recipe.min_component_voxels == 3
    assert not recipe.keep_touching_rule
    # the same cap and filter as the full set's candidate with that cap
    full = all_candidates(cases, ids, min_component_voxels=3)
    assert recipe.to_dict() in _as_dicts(full)
    before = nested_choices(cases, fold_of, candidate_set="cap-filter")
    changed = dict(cases)
    rng = np.random.default_rng(5)
    for c in [c for c in cases if fold_of[c] == 2]:
        pred, ref, adc, zadc = _case(rng, 1, cases[c].pred.shape)
        changed[c] = CaseImages(pred, ref != 0, zadc, adc * 1.3, (4.0, 0.8, 0.8))
    after = nested_choices(changed, fold_of, candidate_set="cap-filter")
    assert _as_dicts(after[2].options) == _as_dicts(before[2].options) and after[2].chosen == before[2].chosen
    assert all(len(f.options) == 2 for f in before.values())
    with pytest.raises(HiennuError, match=r"post-processing candidates must be one of all, cap-filter, judged-rule, got 'some'"):
        all_candidates(cases, ids, candidate_set="some")


def test_the_cap_filter_set_falls_back_to_the_cap_alone_or_to_none(caplog):
    cases, _ = _cases()
    ids = sorted(cases)
    # every component touches a lesion: no filter can be fitted, so the recipe is the cap alone
    clean = {c: replace(cases[c], pred=cases[c].ref.astype(np.uint8)) for c in ids}
    options = all_candidates(clean, ids, min_component_voxels=2, candidate_set="cap-filter")
    assert len(options) == 2 and options[1].component_filter is None and options[1].max_adc is not None
    assert options[1].min_component_voxels == 2
    # no lesion voxels to derive a cap from: nothing but no post-processing
    empty = {c: replace(cases[c], ref=np.zeros_like(cases[c].ref)) for c in ids}
    assert _as_dicts(all_candidates(empty, ids, candidate_set="cap-filter")) == [PostProcessing().to_dict()]
    fold_of = {c: i % 3 for i, c in enumerate(ids)}
    logger = logging.getLogger("hiennu")  # attached to directly: once a command configured it, it stops propagating
    logger.addHandler(caplog.handler)
    try:
        record = select_on_cases(empty, fold_of, Path("raw"), 0, {}, Path("nothing"), candidate_set="cap-filter")
    finally:
        logger.removeHandler(caplog.handler)
    assert record["chosen_name"] == "none" and record["num_candidates"] == 1
    assert "nothing: --candidates cap-filter has no recipe to offer" in caplog.text


def test_determine_postprocessing_with_cap_filter_records_the_set(tmp_path, capsys):
    raw, model = _write_model(tmp_path, folds=3)
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "-f", "0", "1", "2", "--candidates", "cap-filter"]) == 0
        record = json.loads(ModelFolder(model).postprocessing.read_text())
        assert record["candidate_set"] == "cap-filter" and record["num_candidates"] == 2
        assert record["provenance"]["options"]["candidate_set"] == "cap-filter"
        assert set(record["nested"]["num_candidates"].values()) == {2}
        assert "among 2 candidates" in capsys.readouterr().out
        with pytest.raises(SystemExit):
            determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "--candidates", "pairs"])
        assert "invalid choice: 'pairs'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ one home

def test_each_lesion_convention_is_defined_once():
    """The rule threshold, the 26-connectivity, the channel choice and the post-processing file name are
    spelled in one module each; everywhere else imports them."""
    patterns = {
        "rule threshold": (re.compile(r"(THRESHOLD|threshold)\s*(:\s*float\s*)?=\s*-2\.0"), {"masks.py"}),
        "26-connectivity": (re.compile(r"generate_binary_structure\(3,\s*3\)|np\.ones\(\(3,\s*3,\s*3\)"),
                            {"masks.py"}),
        "channel by name": (re.compile(r"""\.index\(["'](z?adc)["']\)|keys\.index\(|["']Z_?ADC["']\s+in\s"""),
                            {"io/channels.py"}),
        "brain channel": (re.compile(r"""def brain_channel"""), {"io/channels.py"}),
        "postprocessing.json": (re.compile(r"""=\s*["']postprocessing\.json["']"""), {"paths.py"}),
    }
    pending: set[str] = set()
    for what, (pattern, homes) in patterns.items():
        found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())}
        assert found - pending == homes, f"{what} defined in {sorted(found)}"


def test_the_size_rule_meets_the_record_in_one_place():
    post = PostProcessing(min_component_voxels=5, keep_touching_rule=True)
    assert with_size_rule(post, 10).min_component_voxels == 10
    assert with_size_rule(post, 3).min_component_voxels == 5
    assert with_size_rule(post, 10, forced=2).min_component_voxels == 2
    assert with_size_rule(None, 4) == PostProcessing(min_component_voxels=4)
    assert with_size_rule(post, 0).rule_threshold == RULE_THRESHOLD


# ------------------------------------------------------------------------------------------ the commands

def _write_model(tmp_path: Path, folds=5, n=15, raw_name="Dataset001_Tiny", size_rule=0):
    rng = np.random.default_rng(3)
    raw = tmp_path / "raw" / raw_name
    model = tmp_path / "results" / raw_name / "TrainerX__hiennuPlans__3d_fullres"
    save_dataset_json(DatasetJson("Tiny", num_training=n), raw / "dataset.json")
    save_plans(tiny_plans(min_component_voxels=size_rule), model / "plans.json")
    for i in range(n):
        geo = Geometry((20, 22, 8), (1.1, 1.0, 2.0 + i % 3), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        pred, ref, adc, zadc = _case(rng, i)
        cid = f"case{i:02d}"
        write_image(adc, geo, raw / "imagesTr" / f"{cid}_0000.mha")
        write_image(zadc, geo, raw / "imagesTr" / f"{cid}_0001.mha")
        write_image(ref, geo, raw / "labelsTr" / f"{cid}.mha")
        write_image(pred, geo, model / f"fold_{i % folds}" / "validation" / f"{cid}.mha")
    return raw, model


def test_determine_postprocessing_writes_what_the_selection_chooses_and_prints_every_candidate(tmp_path, capsys):
    raw, model = _write_model(tmp_path)
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX"]) == 0
        out = capsys.readouterr().out
        written = ModelFolder(model).postprocessing.read_bytes()
        record = json.loads(written)
        for c in record["candidates"]:
            assert f"| {c['name']} |" in out
        assert "pooled Dice" in out and "nested MASD (mm)" in out and f"among {record['num_candidates']}" in out
        assert f"chosen: {record['chosen_name']}" in out
        # the library selection, as the loss study runs it, writes the same bytes
        ModelFolder(model).postprocessing.unlink()
        select_postprocessing(model.resolve(), (tmp_path / "raw" / "Dataset001_Tiny").resolve(), [0, 1, 2, 3, 4])
        assert ModelFolder(model).postprocessing.read_bytes() == written


def test_determine_postprocessing_refuses_bad_folds_and_writes_nothing(tmp_path, capsys):
    raw, model = _write_model(tmp_path, folds=4, n=12)
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "-q"]) == 1
        assert re.search(r"error: fold 4: .*fold_4 not found", capsys.readouterr().err)
        # a fold trained with other plans
        other = tiny_plans(size_xyz=(32, 32, 8))
        save_plans(other, model / "fold_2" / "plans.json")
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "-f", "0", "1", "2", "3", "-q"]) == 1
        err = capsys.readouterr().err
        assert "error: fold 2: trained with other plans" in err and "target_size_xyz" in err
        (model / "fold_2" / "plans.json").unlink()
        # a validation mask on another grid
        mask, geo = read_image(model / "fold_1" / "validation" / "case05.mha", dtype=np.uint8)
        write_image(mask, Geometry(geo.size_xyz, (0.5, 0.5, 1.0), geo.origin_xyz, geo.direction),
                    model / "fold_1" / "validation" / "case05.mha")
        assert determine_cli.main(["-d", "Tiny", "-tr", "TrainerX", "-f", "0", "1", "2", "3", "-q"]) == 1
        err = capsys.readouterr().err
        assert "error: fold 1, case case05: validation mask" in err and "another grid" in err
        assert len(err.strip().splitlines()) == 1
    assert not ModelFolder(model).postprocessing.exists()


def test_the_rules_own_postprocessing_is_chosen_written_as_a_rule_folder_and_applied(tmp_path, capsys):
    """--rule chooses on the rule's masks over the folds of splits_final.json, exactly as the reference row of
    find_best does (select_on_cases on rule_cases); hiennu_predict --baseline zadc --postprocessing applies it."""
    raw, _ = _write_model(tmp_path, folds=3)
    cases = sorted(p.name[:-len(".mha")] for p in (raw / "labelsTr").glob("*.mha"))
    splits = [{"train": [c for j, c in enumerate(cases) if j % 3 != f], "val": cases[f::3]} for f in range(3)]
    (tmp_path / "pre" / "Dataset001_Tiny").mkdir(parents=True)
    (tmp_path / "pre" / "Dataset001_Tiny" / "splits_final.json").write_text(json.dumps(splits))
    path = tmp_path / "results" / "Dataset001_Tiny" / "baseline_zadc" / "postprocessing.json"
    with use_roots(tmp_path / "raw", tmp_path / "pre", tmp_path / "results"):
        assert determine_cli.main(["-d", "Tiny", "--rule", "-f", "0", "1", "2", "--candidates", "cap-filter"]) == 0
        out = capsys.readouterr().out
        record = json.loads(path.read_text())
        fold_of = {c: f for f in range(3) for c in splits[f]["val"]}
        expected = select_on_cases(rule_cases(load_cases({c: raw / "labelsTr" / f"{c}.mha" for c in cases}, raw)),
                                   fold_of, raw, 0, {}, Path("baseline_zadc"), candidate_set="cap-filter")
        assert record["chosen"] == expected["chosen"] and record["nested"] == expected["nested"]
        assert record["candidate_set"] == "cap-filter"
        assert f"-m {path.parent}" in out
        assert (path.parent / "rule.json").is_file() and (path.parent / "dataset.json").is_file()
        # the baseline applies it, with the images, case by case
        images = tmp_path / "in"
        images.mkdir()
        for c in cases[:3]:
            for k in (0, 1):
                (images / f"{c}_000{k}.mha").write_bytes((raw / "imagesTr" / f"{c}_000{k}.mha").read_bytes())
        assert predict_cli.main(["-i", str(images), "-o", str(tmp_path / "out"), "--baseline", "zadc",
                                 "--postprocessing", str(path), "-q"]) == 0
        post = postprocessing_from_record(record, str(path))
        for c in cases[:3]:
            adc, geo = read_image(images / f"{c}_0000.mha")
            zadc = read_image(images / f"{c}_0001.mha")[0]
            out_mask = read_image(tmp_path / "out" / f"{c}.mha", dtype=np.uint8)[0]
            assert np.array_equal(out_mask, apply_postprocessing(rule_mask(zadc, adc).astype(np.uint8), post, zadc,
                                                                 adc, geo.spacing_zyx))
        # the rule folder predicts like a model (-m), the same masks
        assert predict_cli.main(["-i", str(images), "-o", str(tmp_path / "out_m"), "-m", str(path.parent), "-q"]) == 0
        for c in cases[:3]:
            assert np.array_equal(read_image(tmp_path / "out_m" / f"{c}.mha", dtype=np.uint8)[0],
                                  read_image(tmp_path / "out" / f"{c}.mha", dtype=np.uint8)[0])
        # bad input: a model with --postprocessing, --rule with -c, a missing record; nothing written
        assert predict_cli.main(["-i", str(images), "-o", str(tmp_path / "o2"), "-d", "Tiny", "--postprocessing",
                                 str(path), "-q"]) == 1
        assert "--postprocessing is for --baseline" in capsys.readouterr().err
        assert predict_cli.main(["-i", str(images), "-o", str(tmp_path / "o3"), "--baseline", "zadc",
                                 "--postprocessing", str(tmp_path / "none.json"), "-q"]) == 1
        assert "none.json: post-processing record not found" in capsys.readouterr().err
        assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
        with pytest.raises(SystemExit):
            determine_cli.main(["-d", "Tiny", "--rule", "-c", "3d_fullres"])
        assert "--rule is chosen on the folds of splits_final.json" in capsys.readouterr().err


def _record(tmp_path: Path, post: PostProcessing, **extra) -> Path:
    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({"chosen": {**post.to_dict(), **extra}, "chosen_name": post.name}))
    return path


def test_apply_postprocessing_matches_the_library_and_needs_images_only_when_the_record_reads_them(tmp_path, capsys):
    raw, model = _write_model(tmp_path, folds=1, n=3)
    masks = model / "fold_0" / "validation"
    post = PostProcessing(min_component_voxels=3, keep_touching_rule=True, max_adc=1500.0)
    record = _record(tmp_path, post)
    assert apply_cli.main(["-i", str(masks), "-o", str(tmp_path / "out"), "-pp", str(record), "-q"]) == 1
    assert "reads the cases' images; give them with --images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert apply_cli.main(["-i", str(masks), "-o", str(tmp_path / "out"), "-pp", str(record),
                           "--images", str(raw / "imagesTr"), "-q"]) == 0
    for i in range(3):
        mask, geo = read_image(masks / f"case{i:02d}.mha", dtype=np.uint8)
        adc = read_image(raw / "imagesTr" / f"case{i:02d}_0000.mha")[0]
        zadc = read_image(raw / "imagesTr" / f"case{i:02d}_0001.mha")[0]
        out, out_geo = read_image(tmp_path / "out" / f"case{i:02d}.mha", dtype=np.uint8)
        assert np.array_equal(out, apply_postprocessing(mask, post, zadc, adc, geo.spacing_zyx))
        assert out_geo.differences(geo) == []
    # size only: no images needed
    assert apply_cli.main(["-i", str(masks), "-o", str(tmp_path / "sized"), "-pp",
                           str(_record(tmp_path, PostProcessing(min_component_voxels=4))), "-q"]) == 0


@pytest.mark.parametrize("field, value, message", [
    ("colour", "red", "unknown post-processing field.*colour"),
    ("min_component_voxels", 2.5, "min_component_voxels must be a whole number"),
    ("rule_threshold", float("nan"), "rule_threshold must be a finite number"),
    ("max_adc", float("nan"), "max_adc must be null or a positive number"),
    ("component_filter", {"features": ["log_volume_mm3", "extent_z_mm", "outside_shell"], "mean": [0, 0, 0],
                          "scale": [1, 1, 1], "weights": [1, float("nan"), 0], "bias": 0, "threshold": 0.5},
     "component_filter weights must be 3 finite numbers"),
])
def test_apply_postprocessing_refuses_a_bad_record_on_one_line_and_writes_nothing(tmp_path, capsys, field, value,
                                                                                   message):
    raw, model = _write_model(tmp_path, folds=1, n=2)
    record = _record(tmp_path, PostProcessing(), **{field: value})
    assert apply_cli.main(["-i", str(model / "fold_0" / "validation"), "-o", str(tmp_path / "out"), "-pp",
                           str(record), "--images", str(raw / "imagesTr"), "-q"]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_apply_postprocessing_names_the_case_whose_image_is_missing(tmp_path, capsys):
    raw, model = _write_model(tmp_path, folds=1, n=3)
    (raw / "imagesTr" / "case01_0000.mha").unlink()
    record = _record(tmp_path, PostProcessing(max_adc=1500.0))
    assert apply_cli.main(["-i", str(model / "fold_0" / "validation"), "-o", str(tmp_path / "out"), "-pp",
                           str(record), "--images", str(raw / "imagesTr"), "-q"]) == 1
    assert "error: case case01: no ADC image case01_0000.mha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
