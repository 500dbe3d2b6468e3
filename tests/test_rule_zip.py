"""The rule folder (ZADC < -2 with its post-processing) shipped like a model: export, verify, load, install,
default model, ``-m``, and the attacks a rule zip must refuse as a model zip does."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from hiennu.errors import HiennuError
from hiennu.inference.model_registry import (default_checkpoint, model_checkpoint, read_default_model, resolve_model,
                                             set_default_model)
from hiennu.inference.model_zip import (MANIFEST, RULE_ZIP_FORMAT, ModelZipError, export_model_zip, export_models,
                                        export_rule_zip, install_model_zip, is_ensemble_zip, is_rule_zip,
                                        load_ensemble_zip, load_model_zip, load_rule_zip, sha256_bytes,
                                        verify_model_zip, verify_rule_zip)
from hiennu.io.checkpoint import FINAL
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.paths import RULE_DIR
from hiennu.postprocessing.record import postprocessing_from_record
from hiennu.postprocessing.rule_folder import RuleSpec, load_rule_folder, write_rule_folder
from helpers import MODEL, make_model_dir

DATASET = "Dataset007_Rule"
RULE = f"{DATASET}/{RULE_DIR}"
RECORD = {"chosen": {"min_component_voxels": 3, "keep_touching_rule": False, "rule_threshold": -2.0,
                     "max_adc": 1400.0, "component_filter": None}}


def _rule_dir(results: Path, record: dict | None = RECORD, spec: RuleSpec = RuleSpec(),
              dataset: str = DATASET) -> Path:
    return write_rule_folder(results / dataset / RULE_DIR, DatasetJson(name="Rule", channel_names=["ADC", "ZADC"]),
                             record, spec)


def _members(out: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(out) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n != MANIFEST}


def _rezip(path: Path, members: dict[str, bytes], manifest: dict | None = None) -> Path:
    """A zip of ``members`` under ``manifest`` (default: a rule manifest with their true SHA-256)."""
    manifest = manifest or {"format": RULE_ZIP_FORMAT, "format_version": 1, "rule": RULE,
                            "files": {n: sha256_bytes(d) for n, d in members.items()}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_the_record_is_valid():
    assert postprocessing_from_record(RECORD, "test").max_adc == 1400.0


def test_export_verify_load_round_trip(tmp_path):
    folder = _rule_dir(tmp_path / "results")
    out = export_rule_zip(folder, tmp_path / "rule.zip")
    assert is_rule_zip(out) and not is_ensemble_zip(out)
    contents = verify_rule_zip(out)
    assert contents.rule == RULE
    assert sorted(contents.files) == [f"{RULE}/dataset.json", f"{RULE}/postprocessing.json", f"{RULE}/rule.json"]
    loaded, local = load_rule_zip(out, verified=contents), load_rule_folder(folder)
    assert loaded.path == out
    assert (loaded.spec, loaded.dataset, loaded.postprocessing) == (local.spec, local.dataset, local.postprocessing)
    bare = export_rule_zip(_rule_dir(tmp_path / "bare", record=None), tmp_path / "bare.zip")
    assert load_rule_zip(bare).postprocessing is None and len(verify_rule_zip(bare).files) == 2
    # rewritten without a record, a folder that had one is the plain rule, not the old record
    assert load_rule_folder(_rule_dir(tmp_path / "results", record=None)).postprocessing is None


def test_export_install_and_install_again(tmp_path, hiennu_roots):
    folder = _rule_dir(tmp_path / "elsewhere")
    out = export_rule_zip(folder, tmp_path / "rule.zip")
    target = install_model_zip(out)
    root = hiennu_roots["hiennu_results"]
    assert target == root / RULE
    installed, local = load_rule_folder(target), load_rule_folder(folder)
    assert (installed.spec, installed.dataset, installed.postprocessing) == \
           (local.spec, local.dataset, local.postprocessing)
    (target / "notes.txt").write_text("kept")  # the same rule again: nothing copied, nothing removed
    assert install_model_zip(out, make_default=True) == target
    assert (target / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in target.parent.iterdir()) == [RULE_DIR]  # no staging or backup left behind
    assert read_default_model() == target == resolve_model()
    assert model_checkpoint(None) == FINAL == default_checkpoint(target)


def test_install_over_another_rule_needs_overwrite(tmp_path, hiennu_roots):
    root = hiennu_roots["hiennu_results"]
    _rule_dir(root, spec=RuleSpec(threshold=-2.5))
    before = {p.name: p.read_bytes() for p in (root / RULE).iterdir()}
    out = export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip")
    with pytest.raises(HiennuError, match="already exists and holds another rule.*--overwrite"):
        install_model_zip(out)
    assert {p.name: p.read_bytes() for p in (root / RULE).iterdir()} == before
    assert install_model_zip(out, overwrite=True) == root / RULE
    assert load_rule_folder(root / RULE).spec == RuleSpec()
    assert sorted(p.name for p in (root / DATASET).iterdir()) == [RULE_DIR]


def test_install_refuses_a_dataset_id_used_by_another_dataset(tmp_path, hiennu_roots):
    (hiennu_roots["hiennu_raw"] / "Dataset007_Other").mkdir()
    out = export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip")
    with pytest.raises(HiennuError, match="id 007"):
        install_model_zip(out)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


def test_tampered_member_is_refused(tmp_path, hiennu_roots):
    out = export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip")
    members = _members(out)
    manifest = json.loads(zipfile.ZipFile(out).read(MANIFEST))
    members[f"{RULE}/rule.json"] = json.dumps(RuleSpec(threshold=5.0).to_dict()).encode()
    evil = _rezip(tmp_path / "evil.zip", members, manifest)
    with pytest.raises(ModelZipError, match="rule.json does not match its SHA-256"):
        load_rule_zip(evil)
    with pytest.raises(ModelZipError, match="SHA-256"):
        install_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


@pytest.mark.parametrize("name, words", [(f"{DATASET}/other/rule.json", "outside the rule folder"),
                                         (f"{RULE}/run.py", "unexpected member"),
                                         ("../escaped.txt", "unsafe name")])
def test_member_outside_the_folder_is_refused(tmp_path, hiennu_roots, name, words):
    members = _members(export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip"))
    members[name] = b"{}"
    evil = _rezip(tmp_path / "evil.zip", members)
    with pytest.raises(ModelZipError, match=words):
        install_model_zip(evil)
    assert not any(hiennu_roots["hiennu_results"].iterdir())


def test_incomplete_or_misnamed_rule_zip_is_refused(tmp_path):
    members = _members(export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip"))
    without = {n: d for n, d in members.items() if not n.endswith("dataset.json")}
    with pytest.raises(ModelZipError, match="incomplete rule, missing .*dataset.json"):
        verify_rule_zip(_rezip(tmp_path / "incomplete.zip", without))
    manifest = {"format": RULE_ZIP_FORMAT, "format_version": 1, "rule": f"{DATASET}/elsewhere",
                "files": {n: sha256_bytes(d) for n, d in members.items()}}
    with pytest.raises(ModelZipError, match="is not DatasetNNN_Name/baseline_zadc"):
        verify_rule_zip(_rezip(tmp_path / "misnamed.zip", members, manifest))


def test_each_loader_refuses_the_other_kind(tmp_path):
    rule_zip = export_rule_zip(_rule_dir(tmp_path / "src"), tmp_path / "rule.zip")
    for load in (load_model_zip, load_ensemble_zip, verify_model_zip):
        with pytest.raises(ModelZipError, match=r"holds the rule .*not a trained model.*load_rule_zip") as e:
            load(rule_zip)
        assert "\n" not in str(e.value)
    model_zip = export_model_zip(make_model_dir(tmp_path / "results", folds=(0,)), tmp_path / "m.zip")
    with pytest.raises(ModelZipError, match="format is 'hiennu-model', not a rule zip"):
        load_rule_zip(model_zip)
    members = _members(rule_zip)  # a model-looking manifest over a rule's files
    looks_like_a_model = {"format": "hiennu-model", "format_version": 1, "model": MODEL, "checkpoint": FINAL,
                          "folds": ["0"], "files": {n: sha256_bytes(d) for n, d in members.items()}}
    with pytest.raises(ModelZipError, match="not a rule zip"):
        load_rule_zip(_rezip(tmp_path / "disguised.zip", members, looks_like_a_model))


def test_default_model_round_trip_and_a_moved_folder(tmp_path, hiennu_roots):
    root = hiennu_roots["hiennu_results"]
    folder = _rule_dir(root)
    path = set_default_model(folder)
    assert json.loads(path.read_text()) == {"rule_dir": RULE}
    assert read_default_model() == folder
    outside = _rule_dir(tmp_path / "outside")
    set_default_model(outside)
    assert json.loads(path.read_text()) == {"rule_dir": str(outside.resolve())} and read_default_model() == outside
    set_default_model(folder)
    (folder / "rule.json").unlink()
    with pytest.raises(HiennuError, match=r"names .*baseline_zadc as the default model, a rule folder, but it holds "
                                          r"no rule.json.*delete .*default_model.json") as e:
        read_default_model()
    assert "\n" not in str(e.value)


def test_existing_default_records_still_load(tmp_path, hiennu_roots):
    root = hiennu_roots["hiennu_results"]
    model_dir = make_model_dir(root, folds=(0,))
    (root / "default_model.json").write_text(json.dumps({"model_dir": MODEL}))
    assert read_default_model() == root / MODEL == model_dir


def test_resolve_model_names_a_rule_folder(tmp_path, hiennu_roots):
    folder = _rule_dir(hiennu_roots["hiennu_results"])
    assert resolve_model(model=folder) == folder
    assert model_checkpoint(None, model=folder) == FINAL
    with pytest.raises(HiennuError, match="or a rule folder with rule.json"):
        resolve_model(model=tmp_path)
    (folder / "rule.json").unlink()  # a rule folder written before rule.json existed: how to complete it
    with pytest.raises(HiennuError, match="run hiennu_determine_postprocessing --rule again to complete it"):
        resolve_model(model=folder)


def test_the_default_path_command_takes_the_choice_options_of_its_options_class(monkeypatch):
    from hiennu.cli import train_default_model as cli
    from hiennu.pipeline import default_model
    seen = []
    monkeypatch.setattr(default_model, "train_default_model", seen.append)
    assert cli.main(["-d", "BONBID", "-q"]) == 0
    assert (seen[0].rule_candidate, seen[0].postprocessing_candidates) == (
        default_model.DEFAULT_CHOICE["rule_candidate"], default_model.DEFAULT_CHOICE["postprocessing_candidates"])
    assert cli.main(["-d", "BONBID", "--no-rule-candidate", "--postprocessing-candidates", "all", "-q"]) == 0
    assert (seen[1].rule_candidate, seen[1].postprocessing_candidates) == (False, "all")
    assert cli.main(["-d", "BONBID", "--rule-candidate", "--postprocessing-candidates", "judged-rule", "-q"]) == 0
    assert (seen[2].rule_candidate, seen[2].postprocessing_candidates) == (True, "judged-rule")
    assert seen[0].nested_choice is default_model.DEFAULT_CHOICE["nested_choice"] is True
    assert cli.main(["-d", "BONBID", "--no-nested-choice", "-q"]) == 0
    assert seen[3].nested_choice is False


def test_a_rule_folder_with_a_broken_file_is_named(tmp_path):
    folder = _rule_dir(tmp_path / "results")
    (folder / "postprocessing.json").write_text("{not json")
    with pytest.raises(HiennuError, match=r"postprocessing.json: not valid JSON"):
        load_rule_folder(folder)
    (folder / "rule.json").write_text("[]")
    with pytest.raises(HiennuError, match=r"rule.json: not a rule record"):
        load_rule_folder(folder)


def test_export_models(tmp_path, hiennu_roots):
    results = hiennu_roots["hiennu_results"]
    folder = _rule_dir(results)
    assert is_rule_zip(export_models([folder], None, None, None, "hiennuPlans", tmp_path / "rule.zip"))
    model_dir = make_model_dir(results, folds=(0,))
    with pytest.raises(HiennuError, match="the rule cannot be ensembled with models; export it alone"):
        export_models([model_dir, folder], None, None, None, "hiennuPlans", tmp_path / "both.zip")
    with pytest.raises(HiennuError, match="no folds or checkpoints"):
        export_models([folder], None, None, None, "hiennuPlans", tmp_path / "f.zip", folds=[0])
    assert not (tmp_path / "both.zip").exists() and not (tmp_path / "f.zip").exists()


def test_export_refuses_a_folder_without_zadc_or_outside_a_dataset(tmp_path):
    folder = _rule_dir(tmp_path / "results")
    save_dataset_json(DatasetJson(name="Rule", channel_names=["ADC"]), folder / "dataset.json")
    with pytest.raises(HiennuError, match="must hold an ADC and a ZADC channel"):
        export_rule_zip(folder, tmp_path / "rule.zip")
    loose = write_rule_folder(tmp_path / "loose" / RULE_DIR, DatasetJson(name="Rule", channel_names=["ADC", "ZADC"]),
                              RECORD)
    with pytest.raises(HiennuError, match="exported from its dataset's results folder"):
        export_rule_zip(loose, tmp_path / "rule.zip")
    assert not (tmp_path / "rule.zip").exists()


def test_an_installed_rule_zip_is_the_default_that_predict_and_the_challenge_container_use(tmp_path, hiennu_roots):
    """The rule with its post-processing (cap at ADC 1400, components under 3 voxels removed), installed as the
    default from its zip: hiennu_predict without -m and hiennu_predict_challenge write exactly that mask."""
    import numpy as np
    from hiennu.cli import install_model, predict, predict_challenge
    from hiennu.io.image import Geometry, read_image, write_image
    geo = Geometry((8, 8, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    adc = np.full(geo.size_zyx, 1000.0, np.float32)
    zadc = np.zeros(geo.size_zyx, np.float32)
    zadc[1:3, 2:5, 2:5] = -3.0       # a lesion of 18 voxels: kept
    zadc[0, 6, 6:8] = -3.0           # 2 voxels: under the size rule
    zadc[3, 0:2, 0:2] = -3.0         # 4 voxels, but ADC above the cap
    adc[3, 0:2, 0:2] = 2000.0
    expected = np.zeros(geo.size_zyx, np.uint8)
    expected[1:3, 2:5, 2:5] = 1
    out = export_rule_zip(_rule_dir(tmp_path / "results"), tmp_path / "rule.zip")
    assert install_model.main([str(out), "--default", "-q"]) == 0
    flat = tmp_path / "in"
    write_image(adc, geo, flat / "case_0000.mha")
    write_image(zadc, geo, flat / "case_0001.mha")
    assert predict.main(["-i", str(flat), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert np.array_equal(read_image(tmp_path / "out" / "case.mha", dtype=np.uint8)[0], expected)
    challenge = tmp_path / "challenge_in" / "images"
    write_image(adc, geo, challenge / "skull-stripped-adc-brain-mri" / "case.mha")
    write_image(zadc, geo, challenge / "z-score-adc" / "case.mha")
    assert predict_challenge.main(["--input", str(tmp_path / "challenge_in"), "--output", str(tmp_path / "challenge_out"),
                                   "-q"]) == 0
    overlay = tmp_path / "challenge_out" / "images" / "hie-lesion-segmentation" / "overlay.mha"
    assert np.array_equal(read_image(overlay, dtype=np.uint8)[0], expected)


def test_a_record_that_asks_a_network_never_enters_a_rule_folder_or_zip(tmp_path):
    """A judged-rule record (chosen for a model's probabilities) is refused when a rule folder is written, and when
    a folder or zip holding one (edited, or copied in by hand) is read, naming the file, before any prediction."""
    from hiennu.postprocessing.lesion_filter import FEATURES_WITH_PROBABILITY, ComponentFilter
    from hiennu.postprocessing.record import PostProcessing
    judge = ComponentFilter((0.0,) * 4, (1.0,) * 4, (0.0, 0.0, 0.0, 20.0), -10.0, 0.5, FEATURES_WITH_PROBABILITY)
    judged = {"chosen": PostProcessing(component_filter=judge, start_from_rule=True).to_dict()}
    with pytest.raises(HiennuError, match=r"the record for .*postprocessing.json: the ZADC rule has no network to ask"):
        _rule_dir(tmp_path / "written", record=judged)
    assert not (tmp_path / "written" / DATASET / RULE_DIR / "rule.json").exists()
    folder = _rule_dir(tmp_path / "results")
    out = export_rule_zip(folder, tmp_path / "rule.zip")
    (folder / "postprocessing.json").write_text(json.dumps(judged))
    with pytest.raises(HiennuError, match=r"baseline_zadc/postprocessing.json: the ZADC rule has no network to ask"):
        load_rule_folder(folder)
    members = _members(out)
    members[next(n for n in members if n.endswith("postprocessing.json"))] = json.dumps(judged).encode()
    with pytest.raises(HiennuError, match=r"rule_judged.zip:.*postprocessing.json: the ZADC rule has no network"):
        load_rule_zip(_rezip(tmp_path / "rule_judged.zip", members))


def test_a_rule_has_no_folds_or_checkpoints_to_predict_with(tmp_path):
    """-f / -chk with a rule folder or rule zip are refused, as export refuses them, not dropped without a word."""
    from hiennu.inference.predictor import build_predictor
    folder = _rule_dir(tmp_path / "results")
    out = export_rule_zip(folder, tmp_path / "rule.zip")
    for model in (folder, out):
        assert build_predictor(model) is not None
        for folds, checkpoint in (([0], None), (None, "checkpoint_best.pth")):
            with pytest.raises(HiennuError, match="has no folds or checkpoints; predict with it without -f/-chk"):
                build_predictor(model, folds=folds, checkpoint=checkpoint)
    with pytest.raises(HiennuError, match="lies inside .* which it is exported from"):
        export_rule_zip(folder, folder / "rule.json")
    assert load_rule_folder(folder).postprocessing is not None
