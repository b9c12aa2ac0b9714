"""SmoothGrad (Smilkov et al., 2017): saliency averaged over noisy copies of the image, batched."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.chunking import local_generator
from lightning_sas.methods.input_gradients import (
    finite_images,
    nan_where_not_finite,
    normalized_map,
    variant_gradients,
)
from lightning_sas.validation import require_int, require_max_batch, require_non_negative


def _gaussian_draws(seed: int, draws: int, shape: torch.Size, images: Tensor) -> Tensor:
    """``[draws, C, H, W]`` standard normal noise from a local CPU generator, on the images' device."""
    noise = torch.randn((draws, *shape), generator=local_generator(seed), dtype=torch.float32)
    return noise.to(device=images.device, dtype=images.dtype)


class SmoothGrad(AttributionMethod):
    """SmoothGrad (Smilkov et al., 2017): saliency averaged over noisy copies of the image.

    For each probe ``x``, ``samples`` copies ``x + σ ε_s`` with ``ε_s ~ N(0, I)`` and
    ``σ = noise_level × (max(x) − min(x))`` (the paper's noise level, relative to the image's
    value range, so one setting works whatever the normalisation). The noise ``ε_s`` is drawn
    once from a local generator seeded with ``seed`` and shared by all probes (scaled by each
    probe's ``σ``), so a probe's map does not depend on the batch it is in.

    Aggregation: the mean over samples of ``|gradient|`` per channel, then the maximum over
    channels, min-max normalised. This is what Captum's ``NoiseTunnel(Saliency(model))`` with
    ``nt_type="smoothgrad"`` computes (``Saliency`` takes ``abs`` of each sample's gradient
    before the noise tunnel averages), followed by
    :class:`~lightning_sas.methods.saliency.Saliency`'s channel reduction;
    the paper's formula averages the signed gradients, which lets opposite-signed samples
    cancel. Matching Captum keeps the comparison with the library people use exact in
    distribution.

    Sign policy ``"absolute"``: the average of gradient magnitudes, for the same reason as
    :class:`~lightning_sas.methods.saliency.Saliency` (a gradient's sign is a direction, not evidence).

    Args:
        samples: Noisy copies per probe (each one forward and one backward).
        noise_level: Noise standard deviation as a fraction of each image's value range.
        max_batch: Most images in one model forward; ``None`` picks one (see
            :class:`~lightning_sas.methods.saliency.Saliency`).
        seed: Seed of the local noise generator (the global RNG streams are not touched).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> SmoothGrad(samples=2).attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "smoothgrad"
    sign = "absolute"

    def __init__(
        self, samples: int = 25, noise_level: float = 0.15, max_batch: int | None = None, seed: int = 0
    ) -> None:
        require_int("samples", samples, minimum=1)
        require_non_negative("noise_level", noise_level)
        require_max_batch(max_batch)
        require_int("seed", seed, minimum=0)
        self.samples = samples
        self.noise_level = float(noise_level)
        self.max_batch = max_batch
        self.seed = seed

    def passes_per_probe(self) -> int:
        """``samples`` forward + backward passes per probe.

        Example:
            >>> SmoothGrad(samples=25).passes_per_probe()
            25
        """
        return self.samples

    def noise_std(self, images: Tensor) -> Tensor:
        """``[B]``: the noise standard deviation of each image, ``noise_level × (max − min)``."""
        flat = images.detach().flatten(1)
        return self.noise_level * (flat.amax(dim=1) - flat.amin(dim=1))

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Mean over the noisy samples of ``|gradient|``, ``[B, C, H, W]`` float32 (all NaN where not finite)."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        noise = _gaussian_draws(self.seed, self.samples, images.shape[1:], images)
        std = self.noise_std(images)

        def noisy(image: Tensor, draw: Tensor) -> Tensor:
            return images[image] + std[image, None, None, None] * noise[draw]

        scores, mean_magnitude = variant_gradients(
            model,
            images,
            targets,
            self.samples,
            noisy,
            lambda image, draw, gradient: gradient.abs() / self.samples,
            self.max_batch,
            "SmoothGrad",
        )
        finite = finite_images(scores, mean_magnitude)
        return nan_where_not_finite(mean_magnitude, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        mean_magnitude, finite = self._raw_and_finite(model, images, targets)
        return normalized_map(mean_magnitude, finite, "max_abs")
