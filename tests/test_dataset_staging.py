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


def test_a_staging_folder_left_by_a_killed_process_is_removed_by_the_next_run_and_no_other_is(tmp_path):
    """SIGKILL cannot be cleaned up after; the next staging into the same folder removes what a process of this
    host that no longer runs left, and leaves a live run's staging, another host's, and other hidden folders."""
    import signal
    import subprocess
    import sys

    from hiennu.io.atomic import _owner_tag, staging_dir

    script = ("import os, signal, sys; from hiennu.io.atomic import staging_dir; "
              "d = staging_dir(sys.argv[1], '.ds.tmp-'); (d / 'half.mha').write_bytes(b'x' * 1000); "
              "print(d, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL
    killed = tmp_path / run.stdout.split("/")[-1].strip()
    assert killed.is_dir() and killed.name.startswith(".ds.tmp-")
    mine = staging_dir(tmp_path, ".ds.tmp-")  # this process runs: its staging stays
    host = _owner_tag().split("h", 1)[1]
    dead_pid = killed.name[len(".ds.tmp-"):].split("h")[0]
    other_host = tmp_path / f".ds.tmp-{dead_pid}h{'0' if host[0] != '0' else '1'}{host[1:]}abc"  # same pid, other host
    other_host.mkdir()
    moved_aside = tmp_path / ".ds.old-xyz"
    moved_aside.mkdir()
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{}")
    _write_one(tmp_path / "ds", True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert killed.name not in left
    assert {mine.name, other_host.name, moved_aside.name, "ds"} == set(left)
