"""Progress of a long audit, in model passes, for a progress bar.

Methods report the work they finish with :func:`advance` (SaS after each iteration, others
per call); whoever shows progress wraps the audit in :func:`reporting` with a callback. With
no reporter installed, :func:`advance` does nothing, so methods used on their own pay
nothing. Reporting never reads values from the device: it does not slow a GPU loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

_REPORTER: ContextVar[Callable[[int], None] | None] = ContextVar("lightning_sas_progress", default=None)


@contextmanager
def reporting(callback: Callable[[int], None]) -> Iterator[None]:
    """Inside this block, :func:`advance(n) <advance>` calls ``callback(n)``."""
    token = _REPORTER.set(callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def advance(passes: int) -> None:
    """Report ``passes`` finished model passes to the installed reporter, if any."""
    callback = _REPORTER.get()
    if callback is not None:
        callback(passes)


@contextmanager
def accounted(passes: int) -> Iterator[None]:
    """Report ``passes`` for the block in total: what it reports itself, plus the rest at its end.

    Lets a caller account for a method whose cost it knows, whether or not the method reports
    its own progress (SaS does, per iteration; Grad-CAM does not).
    """
    outer = _REPORTER.get()
    if outer is None:
        yield
        return
    reported = 0

    def count(done: int) -> None:
        nonlocal reported
        reported += done
        outer(done)

    with reporting(count):
        yield
    outer(max(0, passes - reported))


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[None]:
    """A tqdm bar of ``total`` model passes, advanced by what the block reports, closed at its end."""
    bar = tqdm(total=total, desc=description, unit="pass", leave=False, dynamic_ncols=True)
    try:
        with reporting(bar.update):
            yield
    finally:
        bar.close()
