"""Saliency (Simonyan et al., 2014): the input gradient of the target logit, batched."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.input_gradients import (
    finite_images,
    nan_where_not_finite,
    normalized_map,
    variant_gradients,
)
from lightning_sas.validation import require_max_batch


class Saliency(AttributionMethod):
    """Saliency (Simonyan et al., 2014): the gradient of the target logit with respect to the input.

    One forward and one backward for all probes. Channel aggregation as in the paper: the map
    is ``max_c |∂ score / ∂ x_c|`` (the largest magnitude over the colour channels), min-max
    normalised per image.

    Sign policy ``"absolute"``: a raw gradient's sign says in which direction a tiny change of
    the pixel would move the score, not whether the pixel is evidence for the class; what
    ranks a pixel is how sensitive the score is to it, whatever the direction (the paper and
    Captum's ``Saliency(abs=True)`` take the magnitude too).

    Args:
        max_batch: Most images in one model forward; ``None`` picks a chunk from free GPU
            memory (CUDA) or a fixed pixel budget (CPU). Halved on out-of-memory.

    Raises:
        ValueError: If ``max_batch`` is not a positive integer or None.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> Saliency().attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "saliency"
    sign = "absolute"

    def __init__(self, max_batch: int | None = None) -> None:
        require_max_batch(max_batch)
        self.max_batch = max_batch

    def passes_per_probe(self) -> int:
        """One forward and one backward per probe."""
        return 1

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The signed input gradient ``[B, C, H, W]`` (float32), all NaN for an image whose score is not finite."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        scores, gradients = variant_gradients(
            model,
            images,
            targets,
            1,
            lambda image, draw: images[image],
            lambda image, draw, gradient: gradient,
            self.max_batch,
            "Saliency",
        )
        finite = finite_images(scores, gradients)
        return nan_where_not_finite(gradients, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        gradients, finite = self._raw_and_finite(model, images, targets)
        return normalized_map(gradients, finite, "max_abs")
