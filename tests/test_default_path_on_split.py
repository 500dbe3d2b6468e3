"""benchmarks/default_path_on_split.py: the default path on another split seed, in roots of its own that leave the
user's preprocessed folder and results untouched."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from hiennu.errors import HiennuError
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from hiennu.study.split_seeds import ensure_seed_splits
from helpers import load_benchmark

DATASET = "Dataset001_Tiny2d"


@pytest.fixture
def script():
    return load_benchmark("default_path_on_split")


@pytest.fixture
def planned(hiennu_roots):
    from test_2d_configuration import _write_raw
    _write_raw(hiennu_roots["hiennu_raw"] / DATASET)
    plan_and_preprocess("Tiny2d", PlanAndPreprocessOptions(configurations=["3d_fullres"], plan_for="cpu",
                                                           num_processes=1))
    return hiennu_roots["hiennu_preprocessed"] / DATASET


def _files(folder):
    return {p.relative_to(folder): p for p in folder.rglob("*") if p.is_file()}


def test_the_split_roots_link_the_cases_and_hold_the_seeds_split(script, planned, tmp_path):
    user_split = (planned / "splits_final.json").read_text()
    pre, results, name = script.split_roots("Tiny2d", 6, tmp_path / "work")
    assert (name, pre, results) == (DATASET, tmp_path / "work" / "preprocessed_seed6",
                                    tmp_path / "work" / "results_seed6")
    theirs, ours = _files(pre / DATASET), _files(planned)
    assert set(theirs) == set(ours)
    for rel, path in ours.items():  # every file but the split is the user's own, linked, not copied
        assert os.path.samefile(path, theirs[rel]) == (rel.name != "splits_final.json"), rel
    expected = json.loads(ensure_seed_splits("Tiny2d", 6, splits_dir=tmp_path / "expected").read_text())
    assert json.loads((pre / DATASET / "splits_final.json").read_text()) == expected
    assert expected != json.loads(user_split)
    assert (planned / "splits_final.json").read_text() == user_split  # the user's split untouched
    assert not (planned / "splits_seed6.json").exists() and not list((tmp_path / "work").glob(".*partial"))
    # a second call reuses the roots as they are (the default path resumes there)
    marker = pre / DATASET / "splits_final.json"
    before = marker.stat().st_mtime_ns
    assert script.split_roots("Tiny2d", 6, tmp_path / "work")[0] == pre and marker.stat().st_mtime_ns == before


def test_a_dataset_not_planned_or_a_bad_seed_is_refused(script, hiennu_roots, tmp_path):
    from test_2d_configuration import _write_raw
    _write_raw(hiennu_roots["hiennu_raw"] / DATASET)
    with pytest.raises(HiennuError, match=r"no plans.json; plan and preprocess Dataset001_Tiny2d first"):
        script.split_roots("Tiny2d", 6, tmp_path / "work")
    with pytest.raises(HiennuError, match="--split-seed must be a whole number >= 0, got -1"):
        script.split_roots("Tiny2d", -1, tmp_path / "work")
    assert not (tmp_path / "work").exists()
    assert script.main(["-d", "Tiny2d", "--split-seed", "6", "-o", str(tmp_path / "work")]) == 1


def test_main_runs_the_default_path_in_the_split_roots(script, planned, tmp_path, monkeypatch):
    seen = {}

    def call(command, env):
        seen.update(command=command, env=env)
        return 0

    monkeypatch.setattr(subprocess, "call", call)
    assert script.main(["-d", "Tiny2d", "--split-seed", "5", "-o", str(tmp_path / "w"), "--", "--device",
                        "cpu"]) == 0
    assert seen["command"][1:] == ["-m", "hiennu.cli.train_default_model", "-d", DATASET, "--device", "cpu"]
    assert seen["env"]["hiennu_preprocessed"] == str(tmp_path / "w" / "preprocessed_seed5")
    assert seen["env"]["hiennu_results"] == str(tmp_path / "w" / "results_seed5")
    assert seen["env"]["hiennu_raw"] == os.environ["hiennu_raw"]
