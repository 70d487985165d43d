"""Mistakes in what a user gave us (a config field, a path, a damaged file), and how to word them.

run.py reports a `UserError` as one line, `run.py: <message>`, without a traceback (absl's
`-v 1` keeps it): the message names the field or file and the fix, so the traceback adds nothing.
A ValueError, as the checks that raise it raised before; the subclasses keep the type of the
error they replace, for the callers that catch that one.
"""

import sys

# The longest part of a library's error quoted in ours: some are a page long.
GIST_CHARS = 200


class UserError(ValueError):
    """A bad input that the user can fix; the message names it and the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingPackageError(UserError, ImportError):
    """An optional package a user's input needs (e.g. torch for a .pth file) is not installed."""


def gist(error: BaseException, chars: int = GIST_CHARS) -> str:
    """`error`'s message on one line, cut to `chars`: libraries (Orbax, TensorStore, torch)
    explain on many lines, and ours must stay one."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = text or type(error).__name__
    return text if len(text) <= chars else text[: chars - 3] + "..."


def drop_aborted_read_errors() -> None:
    """Silences the 'Event loop is closed' errors of the reads that a failed Orbax restore leaves
    in flight: they reach `sys.unraisablehook` by the dozen, each with a traceback, after ours.

    Installed once per process, before a restore; every other unraisable error goes on to the
    hook that was there.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_aborted_reads", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_aborted_reads = True
    sys.unraisablehook = hook
