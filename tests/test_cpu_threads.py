"""``--cpu-threads``: torch's intra-op threads for a CPU training run, refused when not a positive whole number."""

from __future__ import annotations

import json

import pytest
import torch

from hiennu.device import configure_cpu_threads
from hiennu.errors import HiennuError
from hiennu.training.options import TrainingOptions
from helpers import fold_dir, make_tiny_dataset


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_cpu_threads_sets_and_none_keeps(restore_threads):
    torch.set_num_threads(1)   # the test session runs with 1 (conftest), so ask for another count
    configure_cpu_threads(2)
    assert torch.get_num_threads() == 2
    configure_cpu_threads(None)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="positive whole number"):
        configure_cpu_threads(0)


def test_options_refuse_zero_threads():
    with pytest.raises(HiennuError, match="--cpu-threads"):
        TrainingOptions(dataset="X", cpu_threads=0)


def test_a_cpu_run_uses_and_records_the_threads(hiennu_roots, restore_threads):
    from hiennu.cli.train import main
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    torch.set_num_threads(1)   # not the count asked for below, so the run must set it
    assert main(["Tiny", "TrainerDice", "0", "--device", "cpu", "--epochs", "1", "--cpu-threads", "2",
                 "--num-workers", "0", "--no-final-validation", "-q"]) == 0
    debug = json.loads((fold_dir(hiennu_roots["hiennu_results"], "TrainerDice") / "debug.json").read_text())
    assert debug["torch_threads"] == 2 and debug["options"]["cpu_threads"] == 2


def test_prediction_and_training_keep_freed_memory_where_glibc_allows_it(monkeypatch, tmp_path):
    """The prediction and training commands fix glibc's malloc thresholds first (prediction 1.34x, bf16 training steps
    1.18x, benchmarks.md); elsewhere nothing is done and nothing fails."""
    import platform
    import sys

    import hiennu.memory as memory
    from hiennu.cli import predict, predict_challenge, train

    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert memory.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert predict.main(["-i", str(tmp_path / "none"), "-o", str(tmp_path / "out"), "-q"]) == 1
    assert predict_challenge.main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "out2"), "-q"]) == 1
    assert train.main(["Dataset999_None", "TrainerDice", "0", "-q"]) == 1
    assert calls == [1, 1, 1]
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False
