"""What the faithfulness curves insert: the baseline images, and the checks of the curves' settings.

A baseline (:data:`Baseline`) is ``"blur"`` (the SaS blur of the image), ``"zero"``, a finite
number, or a floating tensor broadcastable to the images; :func:`baseline_images` resolves it
to the ``[B, C, H, W]`` images the removed pixels become.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sas.methods.baselines import blur_baseline

#: What the removed pixels become: ``"blur"`` (the SaS blur of the image), ``"zero"``, a
#: number, or a tensor broadcastable to the images ``[B, C, H, W]``.
Baseline = str | float | Tensor

BASELINE_KINDS = ("blur", "zero")


def check_steps(steps: object) -> None:
    """Raise ``ValueError`` unless ``steps`` (the number of equal fractions of the pixels) is an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")


def check_baseline(baseline: object) -> None:
    """Raise ``ValueError`` unless ``baseline`` is a valid :data:`Baseline` (see the module docstring)."""
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise ValueError(
                f"`baseline` tensor must be floating point (broadcastable to the images), got dtype {baseline.dtype}."
            )
        return
    if isinstance(baseline, str):
        if baseline not in BASELINE_KINDS:
            raise ValueError(
                "`baseline` must be 'blur', 'zero', a number or a tensor broadcastable to the images, "
                f"got {baseline!r}."
            )
        return
    if isinstance(baseline, bool) or not isinstance(baseline, int | float) or not math.isfinite(baseline):
        raise ValueError(
            "`baseline` must be 'blur', 'zero', a finite number or a tensor broadcastable to the images, "
            f"got {baseline!r}."
        )


def baseline_images(images: Tensor, baseline: Baseline) -> Tensor:
    """The baseline ``[B, C, H, W]`` in the images' dtype, on their device.

    Args:
        images: ``[B, C, H, W]`` floating tensor.
        baseline: A :data:`Baseline` that passed :func:`check_baseline`.

    Returns:
        The images the removed pixels become (an expanded view for a tensor baseline).

    Raises:
        ValueError: If a tensor ``baseline`` does not broadcast to the images' shape.

    Example:
        >>> baseline_images(torch.ones(1, 1, 2, 2), 0.5)
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
    """
    if isinstance(baseline, Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, images.shape)
        except RuntimeError:
            shape = None
        if shape != images.shape:
            raise ValueError(
                f"`baseline` tensor must be broadcastable to the images' shape {list(images.shape)}, "
                f"got shape {list(baseline.shape)}."
            )
        return baseline.to(device=images.device, dtype=images.dtype).expand(images.shape)
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(images)
        return blur_baseline(images)
    return torch.full_like(images, float(baseline))
