"""How the input normalisation constants ``mean`` / ``std`` are read: one rule, used everywhere.

One value applies to every channel; otherwise there must be exactly one value per channel.
The callback, the rendering and the command line all read ``mean`` and ``std`` through
:func:`check_normalization` (when they are given) and :func:`per_channel` (once the number of
channels is known).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, prefix: str = "`"
) -> tuple[list[float] | None, list[float] | None]:
    """Check ``mean`` / ``std`` where they are given and return them as float lists.

    Args:
        mean: One value for every channel, or one per channel; ``None`` for none.
        std: Likewise; every value must be positive.
        prefix: How argument names are quoted in messages: ``"`"`` gives `` `mean` ``,
            ``"--"`` gives ``--mean`` (the CLI).

    Raises:
        ValueError: If a value is not a finite number, a ``std`` value is not positive, a list
            is empty, or ``mean`` and ``std`` have different lengths other than 1.

    Example:
        >>> check_normalization([0.5], (0.25, 0.25, 0.25))
        ([0.5], [0.25, 0.25, 0.25])
    """
    checked: dict[str, list[float] | None] = {}
    for name, values in (("mean", mean), ("std", std)):
        label = f"{prefix}{name}`" if prefix == "`" else f"{prefix}{name}"
        if values is None:
            checked[name] = None
            continue
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(
                f"{label} must be a list of numbers (1 for every channel, or 1 per channel), got {values!r}."
            )
        numbers = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{label} values must be finite numbers, got {list(values)!r}.")
            numbers.append(float(value))
        if name == "std" and any(value <= 0 for value in numbers):
            raise ValueError(f"{label} values must be positive, got {numbers}.")
        checked[name] = numbers
    mean_values, std_values = checked["mean"], checked["std"]
    if (
        mean_values
        and std_values
        and len(mean_values) != len(std_values)
        and 1 not in (len(mean_values), len(std_values))
    ):
        label = "`mean` and `std`" if prefix == "`" else f"{prefix}mean and {prefix}std"
        raise ValueError(
            f"{label} must have the same number of values (or one of them a single value), "
            f"got {mean_values} and {std_values}."
        )
    return mean_values, std_values


def per_channel(name: str, values: Sequence[float], channels: int) -> list[float]:
    """``values`` expanded to ``channels`` values: one value repeats, else exactly ``channels``.

    Raises:
        ValueError: If there are neither 1 nor ``channels`` values.

    Example:
        >>> per_channel("mean", [0.5], 3)
        [0.5, 0.5, 0.5]
    """
    numbers = [float(value) for value in values]
    if len(numbers) == 1:
        return numbers * channels
    if len(numbers) != channels:
        expected = "1 value" if channels == 1 else f"1 value (for every channel) or {channels} (one per channel)"
        raise ValueError(
            f"`{name}` must have {expected} for the {channels}-channel images, got {len(numbers)}: {numbers}."
        )
    return numbers
