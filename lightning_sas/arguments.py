"""Checks of constructor arguments, one per kind, with messages that name the argument and its value.

Example:
    >>> require_int("steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `steps` must be an integer >= 1, got 0.
"""

from __future__ import annotations

import math


def require_int(name: str, value: object, *, minimum: int) -> None:
    """``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require_positive(name: str, value: object) -> None:
    """``value`` is a finite number above 0."""
    if not _is_finite_number(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def require_non_negative(name: str, value: object) -> None:
    """``value`` is a finite number of at least 0."""
    if not _is_finite_number(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")


def require_max_batch(max_batch: object) -> None:
    """``max_batch`` is ``None`` (chosen automatically) or an integer of at least 1."""
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"`max_batch` must be None or an integer >= 1, got {max_batch!r}.")
