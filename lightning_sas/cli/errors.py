"""What every ``lightning-sas`` command shares: exit statuses, the one-line errors and the error log.

Expected problems raise :class:`UsageError` (one line on stderr, exit status 2); a step that
raises anything else is named by :func:`stage`, which wraps the exception in a
:class:`StepFailure`, whose traceback :func:`write_error_log` writes to ``<out>/error.log``.
"""

from __future__ import annotations

import datetime
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "ERROR_LOG",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_SHORTCUT",
    "EXIT_USAGE",
    "PROGRAM",
    "StepFailure",
    "UsageError",
    "one_line",
    "stage",
    "write_error_log",
]

PROGRAM = "lightning-sas"
EXIT_OK = 0
EXIT_SHORTCUT = 1
EXIT_ERROR = 2
#: The former name of :data:`EXIT_ERROR`.
EXIT_USAGE = EXIT_ERROR
#: Where the traceback of an unexpected exception goes, inside ``--out``.
ERROR_LOG = "error.log"
#: Longest exception text quoted in the one-line error message.
MESSAGE_LIMIT = 300


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit status 2."""


class StepFailure(Exception):
    """An unexpected exception (its ``__cause__``) while doing ``what``: exit 2, traceback to error.log."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint


@contextmanager
def stage(what: str, hint: str = "") -> Iterator[None]:
    """Name the step that was running when an unexpected exception escapes from the block.

    Input errors (already one-line messages) pass through unchanged.
    """
    try:
        yield
    except (UsageError, StepFailure):
        raise
    except Exception as error:  # anything else is unexpected; the entry point writes its traceback
        raise StepFailure(what, hint) from error


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text``'s first non-empty line, whitespace collapsed, cut to ``limit`` characters.

    Example:
        >>> one_line("\\n  first   line \\nsecond")
        'first line'
    """
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_error_log(out: Path, error: BaseException, what: str, command: Sequence[str]) -> str:
    """Write ``error``'s traceback to ``out/error.log``; returns how the one-line message refers to it."""
    import lightning_sas

    path = out / ERROR_LOG
    text = (
        f"{PROGRAM} {lightning_sas.__version__}, {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {' '.join(command)}\n"
        f"while {what}:\n\n" + "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as write_error:
        return f"the traceback could not be written to {path} ({write_error.strerror or write_error})"
    return f"full traceback in {path}"
