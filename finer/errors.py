"""Exceptions that carry a message meant for the user (the CLI prints them on one line)."""

from __future__ import annotations


class FinerError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(FinerError, ValueError):
    """An unknown name, an unknown option, or a value out of range."""


class CropError(FinerError):
    """A centre crop larger than the image it is cut from."""


class _RunEndedEarly(FinerError):
    """A run that ended before its last step; ``metrics``: what it recorded (its metrics.json), empty if nothing."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


class DivergedError(_RunEndedEarly):
    """Training produced a non-finite or diverging loss; the message names the last good step, ``metrics``
    holds what the run recorded of it (its metrics.json: scored at that step), empty if nothing."""


class InterruptedRun(_RunEndedEarly):
    """The user stopped a run (Ctrl-C, or SIGTERM from the command line); the message says what was kept and
    how to go on, ``metrics`` holds what the run recorded (its metrics.json), empty if nothing."""


class FinerWarning(UserWarning):
    """Something the user asked for that the library did differently, and said so (the CLI prints
    ``warning: MESSAGE`` on one line to stderr)."""
