"""The ``finer`` command's entry point: the process environment, then :func:`finer.cli.main`.

PyTorch's CPU tensors come from ``malloc``, and glibc serves every request above 32 MB (a
256 x 256 image's activations at width 256 are 64 MB each) with a fresh mapping that the kernel
faults in and zeroes 4 KB page by page, on every allocation. A training step allocates dozens of
such tensors; on the 2-core machine this library is developed on, the page faults cost more than
the arithmetic of an elementwise kernel (a multiply of two such tensors: 30 ms into a fresh
tensor, 7 ms into a reused one). PyTorch can back its large CPU allocations with transparent huge
pages (2 MB pages, 512 times fewer faults) when ``THP_MEM_ALLOC_ENABLE=1`` is set before its first
allocation, and the kernel's transparent huge pages are in ``madvise`` mode, as on most Linux
distributions; the multiply then takes 15 ms. The command sets that variable unless the user did
(``THP_MEM_ALLOC_ENABLE=0`` turns it off). Programs that import the library are not affected; they
can set it themselves before importing torch. ``finer bench speed`` records whether it was on.

Signals: every command runs within :func:`sigterm_interrupts`, so that SIGTERM stops it as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def huge_pages_requested(env=None) -> bool:
    """Whether PyTorch in a process with environment ``env`` (default: this one) asks for huge pages."""
    env = os.environ if env is None else env
    return env.get(THP_VARIABLE, "0") == "1"


def console() -> None:
    """Entry point of the ``finer`` command."""
    os.environ.setdefault(THP_VARIABLE, "1")  # before torch allocates anything
    from finer.cli import main

    sys.exit(main())


def interrupt(signum, frame):
    """The SIGTERM handler of :func:`sigterm_interrupts`."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within it, SIGTERM (``kill``, ``timeout``, a batch scheduler's stop) stops the program as Ctrl-C
    does: a :class:`KeyboardInterrupt`, and inside :func:`finer.train.fit` a stop after the current step.
    For a command-line program (``finer`` runs every command in it); elsewhere SIGTERM keeps its own
    handler, so that a library user's or a worker pool's handling of it stays theirs. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
