"""Training data: loading preprocessed cases, case sampling, determinism, DDP shares, worker errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.plans import ChannelNormalization, Configuration
from hiennu.training.data import TrainingBatches, load_preprocessed_case, sample_epoch

GRID_ZYX = (8, 12, 12)


def make_config(foreground: float = 0.0, **aug) -> Configuration:
    config = Configuration(name="3d_fullres", target_size_xyz=list(reversed(GRID_ZYX)), grid_policy="forced",
                           normalization=[ChannelNormalization("ADC", "zscore_image"),
                                          ChannelNormalization("ZADC", "atlas_zscore")])
    config.training.foreground_oversampling = foreground
    for k, v in aug.items():
        setattr(config.augmentation, k, v)
    return config


def write_case(case_dir: Path, case_id: str, value: float, lesion: bool) -> None:
    """A case whose data is the constant ``value`` (so a batch tells which case it holds)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(value * 10))
    data = np.full((2, *GRID_ZYX), value, dtype=np.float32) + 0.01 * rng.standard_normal((2, *GRID_ZYX)).astype(np.float32)
    seg = np.zeros((1, *GRID_ZYX), dtype=np.uint8)
    if lesion:
        seg[0, 2:6, 3:9, 4:8] = 1
    np.save(case_dir / f"{case_id}.npy", data)
    np.save(case_dir / f"{case_id}_seg.npy", seg)
    props = {"case_id": case_id, "has_lesion": lesion, "lesion_voxels": int(seg.sum())}
    (case_dir / f"{case_id}.json").write_text(json.dumps(props))


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, list[str]]:
    case_dir = tmp_path / "3d_fullres"
    ids = [f"case_{i:02d}" for i in range(6)]
    for i, cid in enumerate(ids):
        write_case(case_dir, cid, float(i), lesion=i in (1, 4))
    return case_dir, ids


def case_of(batch_data: torch.Tensor) -> list[int]:
    return [int(round(float(v))) for v in batch_data[:, 0].mean(dim=(1, 2, 3))]


# ---------- load_preprocessed_case ----------

def test_load_round_trip_and_mmap(dataset):
    case_dir, ids = dataset
    data, seg, props = load_preprocessed_case(case_dir, ids[1])
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and data.shape == (2, *GRID_ZYX)
    assert seg.dtype == np.uint8 and seg.shape == (1, *GRID_ZYX) and int(seg.sum()) == 4 * 6 * 4
    assert props["has_lesion"] is True
    data2, _, _ = load_preprocessed_case(case_dir, ids[1], mmap=False)
    assert not isinstance(data2, np.memmap)
    np.testing.assert_array_equal(data, data2)


@pytest.mark.parametrize("damage", ["missing_data", "missing_seg", "missing_json", "corrupt_data",
                                    "corrupt_json", "wrong_seg_shape", "wrong_dtype"])
def test_load_bad_files_name_the_file(dataset, damage):
    case_dir, ids = dataset
    cid = ids[2]
    target = {"missing_data": f"{cid}.npy", "missing_seg": f"{cid}_seg.npy", "missing_json": f"{cid}.json",
              "corrupt_data": f"{cid}.npy", "corrupt_json": f"{cid}.json", "wrong_seg_shape": f"{cid}_seg.npy",
              "wrong_dtype": f"{cid}.npy"}[damage]
    path = case_dir / target
    if damage.startswith("missing"):
        path.unlink()
    elif damage == "corrupt_data":
        path.write_bytes(b"\x93NUMPY garbage that is not an array")
    elif damage == "corrupt_json":
        path.write_text("{not json")
    elif damage == "wrong_seg_shape":
        np.save(path, np.zeros((1, 4, 4, 4), dtype=np.uint8))
    elif damage == "wrong_dtype":
        np.save(path, np.zeros((2, *GRID_ZYX), dtype=np.float64))
    before = sorted(p.name for p in case_dir.iterdir())
    with pytest.raises(HiennuError) as e:
        load_preprocessed_case(case_dir, cid)
    assert target in str(e.value) and cid in str(e.value)
    assert "hiennu_plan_and_preprocess" in str(e.value)
    assert sorted(p.name for p in case_dir.iterdir()) == before


def test_wrong_grid_for_plans_is_reported(dataset):
    case_dir, ids = dataset
    config = make_config()
    config.target_size_xyz = [16, 16, 8]
    with pytest.raises(HiennuError, match=r"case_00\.npy.*expects \(2, 8, 16, 16\)"):
        TrainingBatches(case_dir, ids, config, 2, 0, 0, torch.device("cpu"))


# ---------- sampling ----------

def test_sample_epoch_uniform_and_oversampled():
    cases, seeds, _ = sample_epoch(6, [1, 4], global_batch=4, iterations=3000, foreground_fraction=0.0, seed=3, epoch=0)
    counts = np.bincount(cases.ravel(), minlength=6)
    expected = cases.size / 6
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5  # chi-square, 5 dof, p = 0.001
    assert len(np.unique(seeds)) > 0.99 * seeds.size
    cases, _, fg = sample_epoch(6, [1, 4], global_batch=4, iterations=500, foreground_fraction=0.5, seed=3, epoch=0)
    fg_per_batch = np.isin(cases, [1, 4]).sum(axis=1)
    assert fg_per_batch.min() >= 2  # 2 forced, others may hit a lesion case by chance
    assert abs(fg_per_batch.mean() - (2 + 2 * 2 / 6)) < 0.1
    cases, _, _ = sample_epoch(6, [1, 4], global_batch=4, iterations=50, foreground_fraction=1.0, seed=3, epoch=0)
    assert np.isin(cases, [1, 4]).all()


def test_foreground_oversampling_in_batches(dataset):
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(foreground=1.0), 3, 5, 0, torch.device("cpu"), augment=False)
    for data, target in tb.epoch(0, 4):
        assert set(case_of(data)) <= {1, 4}
        assert (target.flatten(1).sum(1) > 0).all()


# ---------- batches ----------

def test_batches_shape_dtype_binary_and_count(dataset):
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(), 2, 0, 0, torch.device("cpu"))
    batches = list(tb.epoch(0, 3))
    assert len(batches) == 3
    for data, target in batches:
        assert data.shape == (2, 2, *GRID_ZYX) and data.dtype == torch.float32 and data.device.type == "cpu"
        assert target.shape == (2, 1, *GRID_ZYX) and target.dtype == torch.float32
        assert set(torch.unique(target).tolist()) <= {0.0, 1.0}
    assert any(not torch.equal(d, torch.full_like(d, d.mean())) for d, _ in batches)


def test_ctrl_c_in_the_workers_wait_raises_without_batchgenerators_error_line(dataset, caplog, monkeypatch):
    """batchgenerators logs a Ctrl-C as ERROR:root:MultiThreadedGenerator: caught exception (KeyboardInterrupt) before
    re-raising it; the training reports the interruption itself, so that line is dropped and the interrupt still
    propagates. Other root-logged errors still show."""
    import logging

    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(), 2, 0, 1, torch.device("cpu"))

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(MultiThreadedAugmenter, "_MultiThreadedAugmenter__get_next_item", interrupted)
    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt):
        next(iter(tb.epoch(0, 2)))
    logging.error("MultiThreadedGenerator: another failure")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("caught exception" in m for m in messages), messages
    assert "MultiThreadedGenerator: another failure" in messages


def test_replay_is_exact_and_independent_of_workers(dataset):
    case_dir, ids = dataset
    config = make_config(p_mirror=0.5, mirror_axes=[0, 1, 2])
    runs = {}
    for workers in (0, 2):
        tb = TrainingBatches(case_dir, ids, config, 2, 11, workers, torch.device("cpu"))
        runs[workers] = [list(tb.epoch(e, 3)) for e in (0, 1)]
        tb.close()
    for (d0, t0), (d2, t2) in zip(runs[0][0] + runs[0][1], runs[2][0] + runs[2][1]):
        assert torch.equal(d0, d2) and torch.equal(t0, t2)
    assert not torch.equal(runs[0][0][0][0], runs[0][1][0][0])  # another epoch, other batches
    again = TrainingBatches(case_dir, ids, config, 2, 11, 0, torch.device("cpu"))
    for (d, t), (d1, t1) in zip(again.epoch(1, 3), runs[0][1]):  # resume straight at epoch 1
        assert torch.equal(d, d1) and torch.equal(t, t1)


def test_ddp_ranks_split_the_single_process_batch(dataset):
    case_dir, ids = dataset
    config = make_config()
    single = list(TrainingBatches(case_dir, ids, config, 4, 7, 0, torch.device("cpu")).epoch(2, 2))
    ranks = [list(TrainingBatches(case_dir, ids, config, 2, 7, 0, torch.device("cpu"), rank=r, world_size=2)
                  .epoch(2, 2)) for r in (0, 1)]
    for it in range(2):
        joined = torch.cat([ranks[0][it][0], ranks[1][it][0]])
        assert torch.equal(joined, single[it][0])
        assert torch.equal(torch.cat([ranks[0][it][1], ranks[1][it][1]]), single[it][1])


def test_device_augmentation_path_runs_and_replays(dataset):
    case_dir, ids = dataset
    config = make_config(p_mirror=0.5)
    tb = TrainingBatches(case_dir, ids, config, 2, 1, 0, torch.device("cpu"), device_augmentation=True)
    assert tb.on_device   # the torch path, not batchgenerators' (which would pass the checks below too)
    first = list(tb.epoch(0, 2))
    second = list(tb.epoch(0, 2))
    for (d, t), (d2, t2) in zip(first, second):
        assert torch.equal(d, d2) and torch.equal(t, t2)
        assert d.shape == (2, 2, *GRID_ZYX) and set(torch.unique(t).tolist()) <= {0.0, 1.0}
    plain = list(TrainingBatches(case_dir, ids, config, 2, 1, 0, torch.device("cpu"), augment=False).epoch(0, 2))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, plain))
    host = list(TrainingBatches(case_dir, ids, config, 2, 1, 0, torch.device("cpu")).epoch(0, 2))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, host))   # other draws than the CPU path's


# ---------- worker failures ----------

class RaisingTransform:
    def __call__(self, **batch):
        raise ValueError("boom from the transform")


class SuicidalTransform:
    def __call__(self, **batch):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("workers", [0, 1])
def test_transform_error_is_carried_to_the_main_process(dataset, workers):
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(), 2, 0, workers, torch.device("cpu"),
                         transform=RaisingTransform())
    with pytest.raises(HiennuError) as e:
        list(tb.epoch(0, 2))
    msg = str(e.value)
    assert "ValueError: boom from the transform" in msg
    assert "raise ValueError(\"boom from the transform\")" in msg  # the worker's own traceback
    assert "batch 0 of epoch 0" in msg and str(case_dir) in msg
    assert tb._augmenter is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_killed_worker_is_reported(dataset):
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(), 2, 0, 1, torch.device("cpu"), transform=SuicidalTransform())
    with pytest.raises(HiennuError, match="SIGKILL.*out of memory"):
        list(tb.epoch(0, 2))
    assert tb._augmenter is None


def test_case_file_vanishing_mid_run_names_it(dataset):
    case_dir, ids = dataset
    tb = TrainingBatches(case_dir, ids, make_config(), 6, 0, 1, torch.device("cpu"), augment=False)
    (case_dir / f"{ids[3]}_seg.npy").unlink()
    with pytest.raises(HiennuError, match=rf"{ids[3]}_seg\.npy is missing"):
        list(tb.epoch(0, 3))


def test_augmentation_workers_end_when_the_training_is_killed_outright(dataset, tmp_path):
    """batchgenerators' workers outlived a training killed with SIGKILL (the OOM killer, a scheduler's hard limit),
    blocked on handing over a batch, about 420 MB each; each now watches the training and ends with it."""
    import subprocess
    import sys
    import time

    from helpers import expect_workers_end_with

    case_dir, ids = dataset
    marker = tmp_path / "workers.txt"
    (tmp_path / "main.py").write_text(f"""
import os, pathlib, sys, time, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_data import make_config
from hiennu.training.data import TrainingBatches
batches = TrainingBatches(pathlib.Path({str(case_dir)!r}), {ids!r}, make_config(), 2, 0, 2, torch.device("cpu"))
epoch = batches.epoch(0, 50)  # kept: a generator dropped closes its workers
next(epoch)
def parent(p):
    try:
        return open(f"/proc/{{p}}/stat").read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return None
family, grown = {{str(os.getpid())}}, True
while grown:  # the workers are children of the training process, or of the fork server it started
    found = {{p for p in os.listdir("/proc") if p.isdigit() and parent(p) in family}}
    grown, family = not found <= family, family | found
pathlib.Path({str(marker)!r}).write_text(" ".join(sorted(family - {{str(os.getpid())}})))
time.sleep(120)
""")
    main = subprocess.Popen([sys.executable, str(tmp_path / "main.py")])
    workers: list[int] = []
    try:
        deadline = time.time() + 600  # the first batch takes over a minute on a busy box
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        workers = [int(w) for w in marker.read_text().split()]
    finally:
        expect_workers_end_with(main, workers)
    assert len(workers) >= 2


@pytest.mark.parametrize("killed", ["one worker", "every worker"])
def test_a_worker_killed_while_handing_over_a_batch_ends_the_epoch_with_the_error(dataset, tmp_path, killed):
    """A worker killed mid hand-over (the OOM killer; ``pkill -TERM -f`` reaching the workers too) left part of a batch
    in its queue's pipe, and the training waited for the rest for ever: a 3d_fullres training hung so. It now ends
    the epoch with the worker's death named, the other workers stopped."""
    import subprocess
    import sys
    import threading

    case_dir, ids = dataset
    (tmp_path / "main.py").write_text(f"""
import os, pathlib, signal, sys, time, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_data import make_config
from hiennu.errors import HiennuError
from hiennu.training.data import TrainingBatches
# 48 samples a batch: about 880 kB pickled, far over a pipe's 64 kB, so a worker's hand-over waits mid-batch
batches = TrainingBatches(pathlib.Path({str(case_dir)!r}), {ids!r}, make_config(), 48, 0, 2, torch.device("cpu"))
epoch = batches.epoch(0, 100)
next(epoch)
time.sleep(3)  # every queue fills; each worker waits with part of a batch in its pipe
workers = list(batches._augmenter._processes)
for p in workers[:1] if {killed!r} == "one worker" else workers:
    os.kill(p.pid, signal.SIGKILL)
print("killed", flush=True)
try:
    for _ in epoch:
        pass
except HiennuError as e:
    print("ERROR", e, flush=True)
print("others alive:", sum(p.is_alive() for p in workers), flush=True)
""")
    # the 48-sample batches take a while on a busy box, so the hang is timed from the kill on
    err_file = tmp_path / "stderr.txt"  # a file, not a pipe: nothing the script writes there can block it
    with open(err_file, "w") as err:
        main = subprocess.Popen([sys.executable, str(tmp_path / "main.py")], stdout=subprocess.PIPE, stderr=err,
                                text=True)
    setup_limit = threading.Timer(600, main.kill)  # a set-up that never ends fails the test instead of the suite
    setup_limit.start()
    try:
        first = main.stdout.readline()
        setup_limit.cancel()
        assert first == "killed\n", "no kill after 600 s: " + first + main.stdout.read() + err_file.read_text()
        try:
            rest, _ = main.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the epoch hung after {killed} was killed mid hand-over")
    finally:
        main.kill()
        main.wait()
    stderr = err_file.read_text()
    assert "ERROR a data worker process died during epoch 0 (exit by SIGKILL" in rest, rest + stderr
    assert "others alive: 0" in rest
    # batchgenerators' results thread notices the death too and raised past the error that names it
    assert "Exception in thread" not in stderr and "no longer alive" not in stderr, stderr


def test_the_results_threads_report_is_dropped_only_after_a_worker_died(monkeypatch):
    """batchgenerators' results thread raising once a worker died printed a traceback before the epoch's own error;
    only that report is dropped: not one of a thread that is not an augmenter's, nor one while every worker lives."""
    import threading
    import types

    from hiennu.training import data

    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    monkeypatch.setattr(data, "_previous_excepthook", data._previous_excepthook)  # restored after the test
    worker = types.SimpleNamespace(exitcode=None)
    ours, other = threading.Thread(target=print), threading.Thread(target=print)
    data._quiet_dead_worker_reports(ours, [types.SimpleNamespace(exitcode=0), worker])
    assert threading.excepthook is data._drop_dead_worker_report

    def report(thread):
        threading.excepthook(types.SimpleNamespace(exc_type=EOFError, exc_value=EOFError(), exc_traceback=None,
                                                   thread=thread))
    monkeypatch.setattr(data, "DEATH_GRACE_SECONDS", 0.3)
    report(ours)
    assert len(seen) == 1  # every worker alive through the grace: a real error of the thread, reported
    # killed, but not reaped yet when the thread reads the end of its pipe: its exit code comes a little later
    threading.Timer(0.1, lambda: setattr(worker, "exitcode", -9)).start()
    report(ours)
    assert len(seen) == 1 and worker.exitcode == -9
    report(ours)
    report(other)
    report(None)
    assert [a.thread for a in seen] == [ours, other, None]
