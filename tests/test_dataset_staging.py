"""Writing a dataset folder in one rename: --overwrite replaces a dataset and nothing else."""

from __future__ import annotations

import os

import pytest

from hiennu.datasets.staging import staged_folder
from hiennu.errors import HiennuError


def _dataset(folder):
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    return folder


def _write_one(target, overwrite):
    with staged_folder(target, overwrite=overwrite) as out:
        (out / "dataset.json").write_text('{"new": 1}')


def test_a_dataset_is_replaced_only_with_overwrite(tmp_path):
    target = _dataset(tmp_path / "ds")
    with pytest.raises(HiennuError, match="dataset already exists; pass --overwrite"):
        _write_one(target, False)
    _write_one(target, True)
    assert (target / "dataset.json").read_text() == '{"new": 1}' and not (target / "imagesTr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_dataset_or_a_file_is_never_replaced(tmp_path, overwrite):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "thesis.txt").write_text("important")
    with pytest.raises(HiennuError, match="is not a dataset \\(no dataset.json\\)"):
        _write_one(folder, overwrite)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HiennuError, match="not a dataset folder"):
        _write_one(tmp_path / "notes.txt", overwrite)
    assert (folder / "thesis.txt").read_text() == "important" and (tmp_path / "notes.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "notes.txt"]


def test_a_dataset_holding_other_files_or_the_working_folder_is_not_replaced(tmp_path, monkeypatch):
    target = _dataset(tmp_path / "ds")
    (target / "my_notes.txt").write_text("keep")
    with pytest.raises(HiennuError, match="also holds my_notes.txt"):
        _write_one(target, True)
    assert (target / "my_notes.txt").read_text() == "keep"
    (target / "my_notes.txt").unlink()
    monkeypatch.chdir(target / "imagesTr")
    with pytest.raises(HiennuError, match="holds the current working folder"):
        _write_one(target, True)
    monkeypatch.chdir(target)
    with pytest.raises(HiennuError, match="holds the current working folder"):
        _write_one(".", True)
    assert (target / "imagesTr").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging or set-aside folder left
    monkeypatch.chdir(tmp_path)
    _write_one(os.path.join("ds", "..", "ds"), True)
    assert (target / "dataset.json").read_text() == '{"new": 1}'


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_empty_folder_is_taken_and_hidden_files_do_not_block_overwrite(tmp_path, overwrite):
    (tmp_path / "empty").mkdir()
    _write_one(tmp_path / "empty", overwrite)
    assert (tmp_path / "empty" / "dataset.json").is_file()
    target = _dataset(tmp_path / "ds")
    (target / ".DS_Store").write_text("finder")
    _write_one(target, True)
    assert (target / "dataset.json").read_text() == '{"new": 1}'
