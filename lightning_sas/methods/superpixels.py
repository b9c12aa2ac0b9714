"""Superpixels for LIME: scikit-image's SLIC or quickshift, or a user's function, on one host image."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

#: ``segmentation(image) -> labels``: one image as a NumPy array ``[H, W, C]`` (channels last, the
#: values the model sees) to integer superpixel labels ``[H, W]``; lime_image's convention, so
#: ``lime.wrappers.scikit_image.SegmentationAlgorithm(...)`` can be passed as it is.
SegmentationFunction = Callable[[np.ndarray], np.ndarray]

#: lime_image's default segmentation: ``quickshift(kernel_size=4, max_dist=200, ratio=0.2)``.
QUICKSHIFT_DEFAULTS = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}


def segment_image(
    image: Tensor, segmentation: str | SegmentationFunction, n_segments: int, compactness: float, sigma: float
) -> Tensor:
    """Labels ``[H, W]`` (int32, relabelled to ``0 .. count - 1``) of one host image ``[C, H, W]``.

    Args:
        image: One image on the host, as the model sees it.
        segmentation: ``"slic"``, ``"quickshift"`` or a :data:`SegmentationFunction`.
        n_segments: SLIC's approximate number of superpixels.
        compactness: SLIC's compactness.
        sigma: SLIC's Gaussian pre-smoothing (pixels).

    Raises:
        ValueError: If a segmentation function returns labels of the wrong shape or type.
    """
    channels_last = image.permute(1, 2, 0).float().numpy()
    if callable(segmentation):
        labels = np.asarray(segmentation(channels_last))
        if labels.shape != channels_last.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"`segmentation` must return integer labels of shape {list(channels_last.shape[:2])}, "
                f"got {labels.dtype} labels of shape {list(labels.shape)}."
            )
    else:
        labels = builtin_segmentation(channels_last, segmentation, n_segments, compactness, sigma)
    _, relabelled = np.unique(labels, return_inverse=True)
    return torch.from_numpy(relabelled.reshape(labels.shape).astype(np.int32))


def builtin_segmentation(
    image: np.ndarray, segmentation: str, n_segments: int, compactness: float, sigma: float
) -> np.ndarray:
    """scikit-image's ``"quickshift"`` (lime_image's defaults) or ``"slic"`` labels of ``image`` ``[H, W, C]``.

    The image is min-max rescaled to [0, 1] over all channels first (non-finite values to 0), so
    the superpixels do not depend on the model's input normalisation.
    """
    from skimage.segmentation import quickshift, slic

    image = image.astype(np.float64)
    finite = np.isfinite(image)
    low, high = (image[finite].min(), image[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = np.where(finite, (image - low) / (high - low), 0.0) if high > low else np.zeros_like(image)
    if segmentation == "quickshift":
        if scaled.shape[-1] == 1:
            scaled = np.repeat(scaled, 3, axis=-1)
        return quickshift(scaled, convert2lab=scaled.shape[-1] == 3, **QUICKSHIFT_DEFAULTS)
    return slic(
        scaled,
        n_segments=n_segments,
        compactness=compactness,
        sigma=sigma,
        start_label=0,
        channel_axis=-1,
    )


def image_digest(image: Tensor) -> tuple:
    """Shape, dtype and a BLAKE2b digest of the bytes of one host image: equal only for equal images."""
    data = image.reshape(-1).view(torch.uint8).numpy().tobytes()
    return (tuple(image.shape), str(image.dtype), hashlib.blake2b(data, digest_size=16).hexdigest())
