"""What the methods and scores perturb towards: the blurred baseline, and the Gaussian filter behind it.

SaS inserts into / deletes towards :func:`blur_baseline`, Integrated Gradients integrates from
it and the faithfulness curves replace pixels with it: one definition, so they explain and score
the same change. Kernels scale with the image size (:func:`scaled_kernel_size`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Image side the reference kernel sizes were chosen for (SaS reference configuration).
REFERENCE_SIDE = 224
#: The blur kernel of SaS's reference configuration at :data:`REFERENCE_SIDE`.
REFERENCE_BLUR_KERNEL = 51


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


def blur_baseline(images: Tensor, kernel_size: int | None = None) -> Tensor:
    """The blurred baseline ``[B, C, H, W]``: a Gaussian blur of ``images`` in their precision.

    ``kernel_size`` ``None`` scales :data:`REFERENCE_BLUR_KERNEL` with the image's shorter side.
    An enclosing autocast would run the blur's convolution in bfloat16; the baseline is an
    input, not part of the model, so it is built without autocast.
    """
    kernel = kernel_size or scaled_kernel_size(REFERENCE_BLUR_KERNEL, min(images.shape[-2:]))
    with torch.autocast(images.device.type, enabled=False):
        return gaussian_blur(images, kernel, opencv_sigma(kernel)).to(images.dtype)
