"""A killed study takes its worker processes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_ends_when_the_study_process_is_killed(tmp_path):
    marker = tmp_path / "worker.pid"
    code = f"""
import os, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from matxfer.study.runner import _worker_init

def work():
    open({str(marker)!r}, "w").write(str(os.getpid()))
    time.sleep(60)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(1,)) as pool:
        pool.submit(work).result()
"""
    script = tmp_path / "study_like.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.time() + 120
        while not marker.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert marker.is_file(), "the worker never started"
        time.sleep(0.5)
        worker = int(marker.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        alive = True
        while alive and time.time() < deadline:
            try:
                os.kill(worker, 0)
                with open(f"/proc/{worker}/stat") as fh:
                    alive = fh.read().split()[2] != "Z"
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            time.sleep(0.2)
        assert not alive, "the worker outlived the killed study process"
    finally:
        proc.kill()
