"""Where the runs of a benchmark grid execute.

An executor takes independent jobs and yields ``(job, result)`` as each finishes (in any order).
The driver (the process that called ``finer bench``) writes every record, so workers need no
shared file system, and a job's result does not depend on where it ran: the same seed builds the
same network and the same data.

- ``local`` (default): ``workers=1`` runs the jobs in this process, one after the other;
  ``workers=N`` runs a pool of N processes on this machine, each with its share of the CPU threads.
- ``ray``: one Ray task per job on an existing cluster (``address``, e.g. ``ray://head:10001`` or
  ``auto``), or on a local Ray instance when no address is given. Ray is an optional extra:
  ``pip install 'finer-inr[ray]'``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from finer.errors import FinerError

EXECUTORS = ("local", "ray")


def threads_per_worker(workers: int) -> int:
    """The torch threads each of ``workers`` local pool processes gets: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def execute(fn: Callable[[Any], Any], jobs: Sequence[Any], *, executor: str = "local", workers: int = 1,
            address: str | None = None, gpus_per_job: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """Yield ``(job, fn(job))`` for every job; ``fn`` must be a picklable top-level function."""
    if executor not in EXECUTORS:
        raise FinerError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise FinerError(f"workers must be >= 1, got {workers}")
    if not jobs:
        return
    if executor == "ray":
        yield from _ray(fn, jobs, address, gpus_per_job)
    elif workers == 1:
        for job in jobs:
            yield job, fn(job)
    else:
        threads = threads_per_worker(workers)
        ctx = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
        others = set(multiprocessing.active_children())
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            try:
                for future in cf.as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:  # Ctrl-C, SIGTERM, an error: no result of the workers will be recorded now,
                for child in set(multiprocessing.active_children()) - others:  # so they stop at once (what a
                    child.terminate()  # run saved of its state is kept); the broken pool starts no queued job
                raise


def _ray(fn, jobs, address, gpus_per_job) -> Iterator[tuple[Any, Any]]:
    try:
        import ray
    except ImportError:
        raise FinerError("--executor ray needs Ray: pip install 'finer-inr[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ours = signal.getsignal(signal.SIGTERM)  # ray.init installs its own exit on SIGTERM, and leaves it
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
        if ours is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, ours)
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_job)(fn)
    pending = {remote.remote(job): job for job in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            yield job, ray.get(done[0])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started_here:
            ray.shutdown()
