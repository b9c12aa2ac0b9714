"""GradientSHAP / expected gradients (Lundberg & Lee, 2017; Erion et al., 2021), batched."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.chunking import local_generator
from lightning_sas.methods.input_gradients import (
    finite_images,
    nan_where_not_finite,
    normalized_map,
    repr_with_tensor_shapes,
    require_sign,
    variant_gradients,
)
from lightning_sas.validation import require_int, require_max_batch, require_non_negative


class GradientSHAP(AttributionMethod):
    """GradientSHAP / expected gradients (Lundberg & Lee, 2017; Erion et al., 2021), batched.

    For each of ``samples`` draws ``s``: a reference ``r_s`` picked uniformly from the
    background set, ``α_s ~ U[0, 1]`` and (with ``stdevs > 0``) input noise ``ε_s``; with
    ``x̃ = x + stdevs · ε_s``::

        phi(x) = mean_s (x̃ − r_s) × ∂ score(r_s + α_s (x̃ − r_s)) / ∂ x

    which is what Captum's ``GradientShap`` (noise on the input, ``stdevs`` in input units,
    default 0) and ``shap.GradientExplainer`` (``local_smoothing``, default 0) compute.
    The draws come from a local generator seeded with ``seed`` and are shared by all probes.

    Background: a tensor ``[N, C, H, W]`` (e.g. training images) is a fixed distribution, so
    a probe's result does not depend on the batch it is in. ``"probes"`` uses the images being
    explained as the background (as ``shap.GradientExplainer(model, images)`` on the images
    themselves), which needs at least two images and makes each probe's map depend on the
    others in the set: explain the same set in one call to reproduce it, or fix the background
    to the whole set with :meth:`bind_probe_set` before splitting it (DDP shards).

    Map: the sum over channels, negative values clipped to 0, min-max normalised. Sign policy
    ``"positive"``: like IG's, the attributions add up (in expectation) to the score minus the
    background's mean score, so a positive value is evidence for the target class relative to
    the background, a negative one evidence against.

    Args:
        background: ``"probes"`` or a floating tensor ``[N, C, H, W]``.
        samples: Draws per probe (each one forward and one backward).
        stdevs: Standard deviation of the Gaussian input noise, in input units (0: none).
        max_batch: Most images in one model forward; ``None`` picks one (see
            :class:`~lightning_sas.methods.saliency.Saliency`).
        seed: Seed of the local generator (the global RNG streams are not touched).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).
        TypeError: If ``background`` is neither ``"probes"`` nor a floating tensor.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> shap = GradientSHAP(samples=2)
        >>> shap.attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "gradientshap"
    sign = "positive"

    def __init__(
        self,
        background: Literal["probes"] | Tensor = "probes",
        samples: int = 50,
        stdevs: float = 0.0,
        max_batch: int | None = None,
        seed: int = 0,
        sign: Literal["positive", "absolute"] = "positive",
    ) -> None:
        require_sign(sign)
        if isinstance(background, Tensor):
            if not background.is_floating_point() or background.dim() != 4 or background.shape[0] == 0:
                raise TypeError(
                    f"`background` tensor must be a non-empty floating tensor [N, C, H, W], "
                    f"got a {background.dtype} tensor of shape {list(background.shape)}."
                )
        elif background != "probes":
            raise TypeError(f"`background` must be 'probes' or a floating tensor [N, C, H, W], got {background!r}.")
        require_int("samples", samples, minimum=1)
        require_non_negative("stdevs", stdevs)
        require_max_batch(max_batch)
        require_int("seed", seed, minimum=0)
        self.background = background.detach().clone() if isinstance(background, Tensor) else background
        self.samples = samples
        self.stdevs = float(stdevs)
        self.max_batch = max_batch
        self.seed = seed
        self.sign = sign

    def passes_per_probe(self) -> int:
        """``samples`` forward + backward passes per probe.

        Example:
            >>> GradientSHAP(samples=50).passes_per_probe()
            50
        """
        return self.samples

    __repr__ = repr_with_tensor_shapes

    def draws(self, background_size: int, image_shape: torch.Size) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(reference_index [samples], alpha [samples], noise [samples, C, H, W] or None)`` on the CPU.

        Drawn from the local generator in this order, so a seed gives the same draws on every
        device; ``noise`` (standard normal, before scaling by ``stdevs``) only when ``stdevs > 0``.
        """
        generator = local_generator(self.seed)
        reference_index = torch.randint(background_size, (self.samples,), generator=generator)
        alpha = torch.rand(self.samples, generator=generator)
        noise = torch.randn((self.samples, *image_shape), generator=generator) if self.stdevs > 0 else None
        return reference_index, alpha, noise

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The expected-gradients values per channel ``[B, C, H, W]`` float32 (all NaN where not finite)."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def bind_probe_set(self, images: Tensor) -> GradientSHAP:
        """With ``background="probes"``: a copy whose background is ``images``, the whole probe set.

        Explaining any subset of the probes with the copy gives the maps that explaining all of
        them with ``self`` gives, so the maps do not depend on how the set is sharded across
        DDP ranks (nor on padding duplicates), and a one-image shard works. A method with a
        tensor background already is independent of the set and is returned as it is.

        Args:
            images: The whole probe set ``[N, C, H, W]`` (``N >= 2``), as the model expects it.

        Returns:
            A :class:`GradientSHAP` with a fixed tensor background; ``self`` is unchanged.

        Raises:
            TypeError: If ``images`` is not a floating tensor ``[N, C, H, W]``.
            ValueError: If ``images`` holds fewer than 2 images.
        """
        if isinstance(self.background, Tensor):
            return self
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
            is_tensor = isinstance(images, Tensor)
            described = f"a {images.dtype} tensor of shape {list(images.shape)}" if is_tensor else type(images).__name__
            raise TypeError(f"`images` must be a floating tensor [N, C, H, W] (the probe set), got {described}.")
        if images.shape[0] < 2:
            raise ValueError(
                "`images` must hold at least 2 probes to be the background of `background='probes'` "
                f"(an image is no reference for itself), got {images.shape[0]}."
            )
        bound = copy.copy(self)
        with torch.inference_mode(False):  # a probe set made in inference mode must serve autograd later
            bound.background = images.detach().clone()
        return bound

    def _background_for(self, images: Tensor) -> Tensor:
        if isinstance(self.background, Tensor):
            if self.background.shape[1:] != images.shape[1:]:
                raise ValueError(
                    f"`background` images have shape {list(self.background.shape[1:])}, the images explained "
                    f"{list(images.shape[1:])}; they must match."
                )
            return self.background.to(device=images.device, dtype=images.dtype)
        if images.shape[0] < 2:
            raise ValueError(
                "`background='probes'` needs at least 2 images (an image is no reference for itself); "
                "got 1. Pass a background tensor to explain images one at a time."
            )
        return images.detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        background = self._background_for(images)
        reference_index, alpha, noise = self.draws(background.shape[0], images.shape[1:])
        references = background[reference_index.to(images.device)]  # [S, C, H, W]
        alpha = alpha.to(device=images.device, dtype=images.dtype)
        if noise is not None:
            noise = self.stdevs * noise.to(device=images.device, dtype=images.dtype)
        images = images.detach()

        def noisy(image: Tensor, draw: Tensor) -> Tensor:
            return images[image] if noise is None else images[image] + noise[draw]

        def between(image: Tensor, draw: Tensor) -> Tensor:
            start = references[draw]
            return start + alpha[draw, None, None, None] * (noisy(image, draw) - start)

        def expected_gradient(image: Tensor, draw: Tensor, gradient: Tensor) -> Tensor:
            return gradient * (noisy(image, draw) - references[draw]).float() / self.samples

        scores, attributions = variant_gradients(
            model, images, targets, self.samples, between, expected_gradient, self.max_batch, "GradientSHAP"
        )
        finite = finite_images(scores, attributions)
        return nan_where_not_finite(attributions, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        attributions, finite = self._raw_and_finite(model, images, targets)
        return normalized_map(attributions, finite, "sum_positive" if self.sign == "positive" else "max_abs")
