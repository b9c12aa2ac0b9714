r"""Input validation, one module for every check: constructor arguments, tensor arguments, and the
normalisation constants ``mean`` / ``std``.

Every message names the function or argument, what was expected and what was given, e.g.
``overlay: `maps` must be a torch.Tensor, got ndarray`` or ``\`steps\` must be an integer >= 1,
got 0.``; the helpers keep that wording in one place.

One rule for ``mean`` / ``std``: one value applies to every channel; otherwise there must be
exactly one value per channel. The callback, the rendering and the command line all read them
through :func:`check_normalization` (when they are given) and :func:`per_channel` (once the
number of channels is known).

Example:
    >>> require_int("steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `steps` must be an integer >= 1, got 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

# ----------------------------------------------------------------------------- arguments

def require_int(name: str, value: object, *, minimum: int) -> None:
    """``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def require_optional_int(name: str, value: object, *, minimum: int) -> None:
    """``value`` is ``None`` or an ``int`` (not a ``bool``) of at least ``minimum``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"`{name}` must be an integer >= {minimum} or None, got {value!r}.")


def require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    r"""``value`` is one of ``choices``: ``\`target\` must be 'pred' or 'label', got 'truth'.``"""
    if value not in choices:
        listed = " or ".join(repr(choice) for choice in choices)
        raise ValueError(f"`{name}` must be {listed}, got {value!r}.")


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


# ----------------------------------------------------------------------------- tensor_checks

def shape_of(tensor: Tensor) -> list[int]:
    """The tensor's shape as a plain list, for error messages.

    ``torch.Size`` prints as ``torch.Size([2, 3])``; a list prints as ``[2, 3]``, which
    reads as the ``[B, H, W]``-style shapes the messages describe.

    Args:
        tensor: Any tensor.

    Returns:
        The sizes of its dimensions, outermost first.

    Example:
        >>> import torch
        >>> shape_of(torch.zeros(2, 3, 4))
        [2, 3, 4]
    """
    return list(tensor.shape)


def require_tensor(function: str, name: str, value: object) -> Tensor:
    """Return ``value`` if it is a tensor, else raise a ``TypeError`` that names the argument.

    Args:
        function: Name of the public function being called, which starts the message.
        name: Name of the argument being checked.
        value: The argument's value.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: If ``value`` is not a :class:`torch.Tensor`.

    Example:
        >>> require_tensor("overlay", "maps", [0.5])
        Traceback (most recent call last):
        ...
        TypeError: overlay: `maps` must be a torch.Tensor, got list
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{function}: `{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- normalization

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
