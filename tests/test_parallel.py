"""Worker pools (``hiennu.parallel``): the workers end when the process that started them is killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from hiennu.parallel import parallel_map, process_alive

from helpers import expect_workers_end_with


def _square(x: int) -> int:
    return x * x


def test_parallel_map_keeps_the_order_of_the_jobs():
    assert parallel_map(_square, [(i,) for i in range(7)], 2) == [i * i for i in range(7)]


@pytest.mark.skipif(sys.platform != "linux", reason="a zombie is told apart through /proc")
def test_a_dead_or_zombie_process_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not yet reaped: a zombie
    assert process_alive(os.getpid()) and not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_workers_end_when_their_command_is_killed_outright(tmp_path):
    """SIGKILL (the OOM killer, a scheduler's hard limit) cannot let the pool stop its workers; they waited for jobs
    forever, holding memory and the command's output pipe open."""
    (tmp_path / "slow_jobs.py").write_text(textwrap.dedent(f"""
        import os, time
        def job(i):
            open(os.path.join({str(tmp_path)!r}, f"worker_{{os.getpid()}}"), "w").close()
            time.sleep(60)
    """))
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        from hiennu.parallel import parallel_map
        import slow_jobs
        if __name__ == "__main__":
            parallel_map(slow_jobs.job, [(i,) for i in range(4)], 2)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    main = subprocess.Popen([sys.executable, str(tmp_path / "main.py")], env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("worker_*"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        workers = [int(p.name.split("_")[1]) for p in tmp_path.glob("worker_*")]
        expect_workers_end_with(main, workers)
    assert len(workers) == 2


def test_workers_draw_progress_bars_only_when_the_command_does(tmp_path):
    """A worker is a fresh process: it drew its own bars under -q (hiennu_find_best_configuration -q printed seven)."""
    (tmp_path / "barred_jobs.py").write_text(textwrap.dedent("""
        import time
        from hiennu.log import progress
        def job(i):
            for _ in progress(range(3), desc="inner bar"):
                time.sleep(0.05)
            return i
    """))
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        import sys
        from hiennu.log import configure
        from hiennu.parallel import parallel_map
        import barred_jobs
        if __name__ == "__main__":
            configure(verbose=sys.argv[1] == "verbose")
            assert parallel_map(barred_jobs.job, [(i,) for i in range(4)], 2) == [0, 1, 2, 3]
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    quiet, verbose = (subprocess.run([sys.executable, str(tmp_path / "main.py"), mode], env=env, cwd=tmp_path,
                                     capture_output=True, text=True, timeout=120) for mode in ("quiet", "verbose"))
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "inner bar" not in quiet.stderr and quiet.stderr.strip() == ""
    assert "inner bar" in verbose.stderr
