"""The ``finer`` command: argument parsing only; the work is done by the library.

:mod:`finer.cli.parser` builds the arguments, :mod:`finer.cli.commands` holds one function per
command; :func:`main` runs the one the arguments name and turns errors into one line and an exit status.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import warnings
from typing import Iterator, Sequence

from finer.cli.commands import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED
from finer.cli.parser import build_parser
from finer.errors import DivergedError, FinerError, FinerWarning, InterruptedRun

__all__ = ["EXIT_DIVERGED", "EXIT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # refused by the command's own parser, which names its own --help
        args.leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, as reports record it
    try:
        with warnings.catch_warnings(), _sigterm_interrupts():
            warnings.simplefilter("always", FinerWarning)
            warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
            return args.run(args)
    except DivergedError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except InterruptedRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FinerError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `finer models | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 0
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder must be (or the reverse)
        if args.debug:
            raise
        print(f"error: {exc.filename}: {exc.strerror} (a file stands where a folder is needed, or the reverse)",
              file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        if args.debug:
            raise
        print(f"error: out of memory; {_memory_hint(args)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # anything unexpected: one line unless --debug
        if args.debug:
            raise
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            print(f"error: out of GPU memory; {_memory_hint(args)} (or --device cpu)", file=sys.stderr)
            return EXIT_ERROR
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _memory_hint(args) -> str:
    """What makes the command that ran out of memory smaller, in its own options."""
    command = (getattr(args, "command", None), getattr(args, "task", None) or getattr(args, "bench", None))
    if command == ("fit", "sdf"):
        return f"use a smaller --batch-size (now {args.batch_size}), --pool-size or --resolution"
    if command == ("fit", "nerf"):
        return f"use fewer --rays (now {args.rays}), a larger --downscale or fewer --samples"
    if command[0] == "resume":
        return "a run resumes at its recorded batch size: fit it again with a smaller --batch-size"
    if command[0] == "fit":
        batch = getattr(args, "batch_size", None)
        return ("use a smaller image (--size/--crop) or "
                + (f"a smaller --batch-size than {batch}" if batch else "--batch-size N (random pixels per step)"))
    if command[0] == "eval":
        return "use a smaller --resolution, --iou-resolution or --chamfer-samples"
    return "use a smaller size or resolution option of this command"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) stops a command as Ctrl-C does, so that a run
    records ``interrupted`` and keeps what it saved instead of dying with ``running`` in its metrics.json.
    (Inside a training loop both signals stop it after the current step; see :func:`finer.train.fit`.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_warning(show, message, category, filename, lineno, file=None, line=None):
    """A :class:`~finer.errors.FinerWarning` as ``warning: MESSAGE`` on one line; others as ``show`` shows them."""
    if issubclass(category, FinerWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        show(message, category, filename, lineno, file, line)
