"""Separable Gaussian filtering on the device, and the rule that scales kernels with image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Image side the reference kernel sizes were chosen for (SaS reference configuration).
REFERENCE_SIDE = 224


def scaled_kernel_size(reference_size: int, side: int) -> int:
    """``reference_size`` (valid at 224 px) scaled to an image side: nearest odd integer, >= 3.

    Example:
        >>> scaled_kernel_size(51, 224), scaled_kernel_size(51, 64), scaled_kernel_size(17, 32)
        (51, 15, 3)
    """
    scaled = reference_size * side / REFERENCE_SIDE
    return max(3, 2 * round((scaled - 1) / 2) + 1)


def opencv_sigma(kernel_size: int) -> float:
    """The sigma OpenCV's ``GaussianBlur`` uses for ``sigma=0`` (so our blur matches the reference)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def gaussian_kernel_1d(kernel_size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian weights of odd length ``kernel_size``."""
    offsets = torch.arange(kernel_size, device=device, dtype=torch.float64) - (kernel_size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_blur(images: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Blur ``[B, C, H, W]`` with a separable Gaussian, reflecting at the borders like OpenCV.

    The kernel is clipped to the image (reflection padding needs ``pad < side``), which only
    matters for kernels wider than the image itself.
    """
    channels = images.shape[1]
    result = images
    for dim in (-1, -2):
        size = min(kernel_size, 2 * images.shape[dim] - 1)
        size -= 1 - size % 2  # keep it odd
        weights = gaussian_kernel_1d(size, sigma, images.device, images.dtype)
        pad = size // 2
        if dim == -1:
            kernel = weights.view(1, 1, 1, size).expand(channels, 1, 1, size)
            padded = F.pad(result, (pad, pad, 0, 0), mode="reflect")
        else:
            kernel = weights.view(1, 1, size, 1).expand(channels, 1, size, 1)
            padded = F.pad(result, (0, 0, pad, pad), mode="reflect")
        result = F.conv2d(padded, kernel, groups=channels)
    return result
