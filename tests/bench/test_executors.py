"""Where a grid's runs execute: what a stopped driver does to its workers."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from finer.bench.executors import execute
from finer.launch import sigterm_interrupts


def slow_job(seconds):  # top level: the pool's spawned workers import it
    time.sleep(seconds)
    return seconds


def test_a_stopped_driver_stops_its_pool_workers_at_once():
    """`kill` of a `bench images --workers N` driver (SIGTERM, as Ctrl-C) does not wait for the runs in
    flight, whose results it would no longer record, nor start the queued ones."""
    before = set(multiprocessing.active_children())
    timer = threading.Timer(4, lambda: os.kill(os.getpid(), signal.SIGTERM))
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        timer.start()
        for _ in execute(slow_job, [60, 60, 60], workers=2):
            raise AssertionError("a job of 60 s finished")
    assert time.perf_counter() - t0 < 30
    deadline = time.time() + 10
    while set(multiprocessing.active_children()) - before and time.time() < deadline:
        time.sleep(0.1)
    assert not set(multiprocessing.active_children()) - before


def test_ray_leaves_the_commands_sigterm_handler_in_place():
    """ray.init installs its own exit on SIGTERM and keeps it after shutdown: a benchmark on Ray must
    still stop as the CLI promises (one line, exit 130), so the handler is put back."""
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'finer-inr[ray]')")
    from finer.launch import interrupt

    seen = []
    with sigterm_interrupts():
        for job, result in execute(slow_job, [0], executor="ray"):
            seen.append((result, signal.getsignal(signal.SIGTERM)))
        assert signal.getsignal(signal.SIGTERM) is interrupt
    assert seen == [(0, interrupt)]


def test_more_local_workers_than_four_a_core_are_refused(tmp_path, capsys):
    import os

    from finer.cli import main

    too_many = 4 * (os.cpu_count() or 1) + 1
    assert main(["bench", "images", str(tmp_path), "--models", "finer", "--workers", str(too_many), "--out",
                 str(tmp_path / "b")]) == 2
    assert f"workers {too_many} is more than" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["bench", "images", str(tmp_path), "--workers", "1000000000000", "--out", str(tmp_path / "b")]) == 2
