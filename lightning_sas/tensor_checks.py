"""Argument checks shared by the tensor functions (:mod:`lightning_sas.metrics`, :mod:`lightning_sas.render`).

Both modules report a bad argument the same way: the function, the argument's name, what
was expected and what was given, e.g. ``overlay: `maps` must be a torch.Tensor, got
ndarray``. The helpers here keep that wording in one place.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["require_tensor", "shape_of"]


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
