"""The ``finer`` command: argument parsing only; the work is done by the library.

:mod:`finer.cli.parser` builds the arguments, :mod:`finer.cli.commands` holds one function per
command; :func:`main` runs the one the arguments name and turns errors into one line and an exit status.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from finer.cli.commands import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED
from finer.cli.parser import build_parser
from finer.errors import DivergedError, FinerError, FinerWarning, InterruptedRun
from finer.launch import sigterm_interrupts

__all__ = ["EXIT_DIVERGED", "EXIT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]


PATH_ARGUMENTS = ("path", "scene", "mesh", "a", "b", "checkpoint", "run_dir", "directory", "results", "target",
                  "out", "image", "signals_dir")
"""The arguments that name files or folders."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    unknown = _trailing_positionals(args, unknown)
    if unknown:  # refused by the command's own parser, which names its own --help
        args.leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    for action in args.leaf._actions:  # an empty path ("" from an unset shell variable) would mean "."
        value = getattr(args, action.dest, None)
        if action.dest in PATH_ARGUMENTS and "" in (value if isinstance(value, list) else [value]):
            args.leaf.error(f"{'/'.join(action.option_strings) or action.metavar or action.dest}: an empty path")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, as reports record it
    try:
        with warnings.catch_warnings(), sigterm_interrupts():
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
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno in _FILE_SYSTEM_ERRORS:  # a read-only or full disk, a file or folder not ours
            print(f"error: {_file_system_error(exc)}", file=sys.stderr)
            return EXIT_ERROR
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
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
        if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):  # PyTorch's CPU allocator
            print(f"error: out of memory; {_memory_hint(args)}", file=sys.stderr)
            return EXIT_ERROR
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _trailing_positionals(args, unknown: list[str]) -> list[str]:
    """Values left after an option for a command whose last positional takes many (`bench compare DIR --lead A
    B:C`: argparse fills the pairs before it reaches --lead and leaves B:C over): they join that positional.
    Returns what is still unknown."""
    positionals = [a for a in args.leaf._actions if not a.option_strings]
    if not unknown or not positionals or positionals[-1].nargs not in ("*", "+"):
        return unknown
    dest = positionals[-1].dest
    setattr(args, dest, list(getattr(args, dest) or []) + [u for u in unknown if not u.startswith("-")])
    return [u for u in unknown if u.startswith("-")]


_FILE_SYSTEM_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}
"""Errors of the file system that the user mends (a read-only or full disk, a permission)."""


def _file_system_error(exc: OSError) -> str:
    """One line for an error of :data:`_FILE_SYSTEM_ERRORS`: a disk that takes no writes is named by the
    folder (the file may be a temporary one); a permission by the file or folder refused."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission for {exc.filename}: {exc.strerror}" if exc.filename else f"{exc.strerror}"
    where = f" in {Path(exc.filename).parent}" if exc.filename else " (the disk of the output folder?)"
    return f"cannot write{where}: {exc.strerror}"


def _memory_hint(args) -> str:
    """What makes the command that ran out of memory smaller, in its own options."""
    sub = getattr(args, "task", None) or getattr(args, "bench", None) or getattr(args, "analysis", None)
    command, batch = (args.command, sub), getattr(args, "batch_size", None)
    if command == ("fit", "image") and (getattr(args, "batch_signals", None) or 1) > 1:
        return (f"fit fewer images at once (a smaller --batch-signals than {args.batch_signals}) or smaller ones "
                "(--size/--crop)")
    hints = {
        ("fit", "image"): "use a smaller image (--size/--crop) or " + (
            f"a smaller --batch-size than {batch}" if batch else "--batch-size N (random pixels per step)"),
        ("fit", "sdf"): f"use a smaller --batch-size (now {batch}), --pool-size or --resolution",
        ("fit", "nerf"): f"use fewer --rays (now {getattr(args, 'rays', None)}), a larger --downscale or fewer "
                         "--samples",
        ("resume", None): "a run resumes at its recorded batch size: fit it again with a smaller --batch-size",
        ("eval", "sdf"): "use a smaller --resolution, --iou-resolution or --chamfer-samples",
        ("eval", "image"): "the images are compared whole: compare smaller ones, or pass --no-lpips",
        ("render", None): "use a smaller --scale" + (
            " or fewer --frames" if getattr(args, "target", [""])[0] == "nerf" else ""),
        ("bench", "images"): "use smaller images (--size/--crop), fewer --workers or a smaller --batch-signals",
        ("bench", "sdf"): "use a smaller --resolution or --chamfer-samples",
        ("bench", "speed"): "use a smaller --size or --width, or fewer --signals",
        ("analyze", "ntk"): "use fewer --points or a smaller --width",
        ("analyze", "activations"): "use a smaller --resolution",
        ("analyze", "neurons"): "the neurons are drawn on the run's whole training grid: analyze a run fitted to "
                                "a smaller image",
    }
    hints[("bench", "width")] = hints[("bench", "images")]
    return hints.get(command, "use smaller sizes in this command's options")


def _show_warning(show, message, category, filename, lineno, file=None, line=None):
    """A :class:`~finer.errors.FinerWarning` as ``warning: MESSAGE`` on one line; others as ``show`` shows them."""
    if issubclass(category, FinerWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        show(message, category, filename, lineno, file, line)
