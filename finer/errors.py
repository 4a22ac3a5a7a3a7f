"""Exceptions that carry a message meant for the user (the CLI prints them on one line)."""


class FinerError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(FinerError, ValueError):
    """An unknown name, an unknown option, or a value out of range."""


class CropError(FinerError):
    """A centre crop larger than the image it is cut from."""


class DivergedError(FinerError):
    """Training produced a non-finite loss; the message names the last good step."""


class InterruptedRun(FinerError):
    """The user stopped a run (Ctrl-C) that cannot be resumed as it was; the message says what was kept."""


class FinerWarning(UserWarning):
    """Something the user asked for that the library did differently, and said so (the CLI prints
    ``warning: MESSAGE`` on one line to stderr)."""
