"""Shared fixtures: isolated hiennu roots per test and the real BONBID dev cases (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "BONBID2023_Train_dev"


@pytest.fixture
def hiennu_roots(tmp_path, monkeypatch):
    """Point hiennu_raw / hiennu_preprocessed / hiennu_results at fresh folders under tmp_path."""
    roots = {}
    for env in ("hiennu_raw", "hiennu_preprocessed", "hiennu_results"):
        p = tmp_path / env
        p.mkdir()
        monkeypatch.setenv(env, str(p))
        roots[env] = p
    return roots


@pytest.fixture
def ctrl_c_delivered():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt during the test, as in a terminal, whatever the runner inherited: a
    shell starts background jobs (``pytest &``, ``nohup``) with SIGINT ignored, and a test that sends itself SIGINT
    then sees nothing. The handler in place before is restored."""
    import signal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def real_bonbid_dir() -> Path:
    """The 37 real BONBID dev cases in the official layout; skips the test when they are absent."""
    path = REAL_DATA.resolve()
    if not (path / "1ADC_ss").is_dir():
        pytest.skip(f"real BONBID dev cases not found at {path} (they live outside the repository; "
                    f"see ../shared/data/README.md)")
    return path
