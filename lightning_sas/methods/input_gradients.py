"""What the input-gradient methods share: batched variant gradients, the finite check, the map.

Saliency, SmoothGrad, Integrated Gradients and GradientSHAP all explain a probe with input
gradients of its target logit, at the image itself (Saliency) or at many variants of it
(noisy copies, points on a path, points between the image and background references). Every
variant of every probe goes through the model in chunks of at most ``max_batch`` images
(:func:`~lightning_sas.methods.chunking.target_scores_in_chunks`, which also retries with half
the chunk on out-of-memory). Random draws come from a local CPU generator seeded by ``seed``
and are shared by all probes (scaled per probe where needed), so a probe's result does not
depend on the other probes in the batch, nor on the device.

Each method has a public ``raw_attribution`` (the per-channel values before the channel
reduction and normalisation, as the peer libraries return them) and an ``attribute`` that
turns them into a ``[B, H, W]`` map in [0, 1] by its ``sign`` policy (:func:`normalized_map`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.methods.chunking import GradientSum, auto_chunk, target_scores_in_chunks

#: ``variant_inputs(image_index [n], draw_index [n]) -> inputs [n, C, H, W]``.
VariantInputs = Callable[[Tensor, Tensor], Tensor]
#: ``(image_index [n], draw_index [n], gradients [n, C, H, W]) -> [n, C, H, W]``: what a variant adds to its image.
VariantContribution = Callable[[Tensor, Tensor, Tensor], Tensor]


def variant_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    draws: int,
    variant_inputs: VariantInputs,
    contribution: VariantContribution,
    max_batch: int | None,
    what: str,
) -> tuple[Tensor, Tensor]:
    """Target scores ``[B, draws]`` and, per image, the sum of its variants' contributions ``[B, C, H, W]``.

    Variant ``(i, s)`` is ``variant_inputs(i, s)``; all ``B × draws`` variants are forwarded in
    chunks, image-major, each built only when its chunk runs, and each chunk's gradients are
    turned into ``contribution(i, s, gradient)`` and summed into image ``i`` at once, so memory
    holds one chunk of gradients, never all ``B × draws`` of them.
    """
    batch = images.shape[0]
    total = batch * draws

    def split(start: int, stop: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(start, stop, device=images.device)
        return index // draws, index % draws

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        image_index, draw_index = split(start, stop)
        # Contiguous (NCHW) like the peers' inputs: channels-last gave no measurable speed-up on
        # the CPU here, and other convolution kernels can flip a ReLU / max-pool near a tie,
        # which moves a gradient by far more than float rounding.
        return variant_inputs(image_index, draw_index), targets[image_index]

    def contribute(start: int, stop: int, gradients: Tensor) -> tuple[Tensor, Tensor]:
        image_index, draw_index = split(start, stop)
        return image_index, contribution(image_index, draw_index, gradients)

    chunk = max_batch or auto_chunk(model, images[:1], total, with_gradient=True)
    scores, sums = target_scores_in_chunks(
        model,
        build,
        total,
        chunk=chunk,
        image_targets=targets,
        what=what,
        device=images.device,
        gradient_sum=GradientSum(batch, contribute),
    )
    return scores.view(batch, draws), cast(Tensor, sums)  # with gradient_sum, the sums are always there


def finite_images(scores: Tensor, raw: Tensor) -> Tensor:
    """``[B]`` bool: every score of the image's variants and every raw value is finite.

    A NaN score can have a zero gradient (``torch.where``, ``masked_fill``), so the scores
    are checked as well as the gradients.
    """
    return torch.isfinite(scores).flatten(1).all(dim=1) & torch.isfinite(raw).flatten(1).all(dim=1)


def nan_where_not_finite(values: Tensor, finite: Tensor) -> Tensor:
    """``values`` ``[B, ...]`` with every value of an image that is not ``finite`` (``[B]`` bool) set to NaN."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    return torch.where(finite.view(shape), values, float("nan"))


def normalized_map(per_channel: Tensor, finite: Tensor, reduce: Literal["max_abs", "sum_positive"]) -> Tensor:
    """``[B, C, H, W]`` → ``[B, H, W]`` in [0, 1] (all NaN for the images that are not finite)."""
    if reduce == "max_abs":
        maps = per_channel.abs().amax(dim=1)
    else:
        maps = per_channel.sum(dim=1).clamp_min(0)
    return nan_where_not_finite(minmax_normalize(maps), finite)


def require_sign(sign: object) -> None:
    """``sign`` is a map policy of a method whose evidence is signed (IG, GradientSHAP)."""
    if sign not in ("positive", "absolute"):
        raise ValueError(f"`sign` must be 'positive' or 'absolute', got {sign!r}.")


def repr_with_tensor_shapes(method: AttributionMethod) -> str:
    """``Name(setting=value, ...)`` with tensors shown by shape (a background set would fill a log line)."""

    def describe(value: object) -> str:
        return f"Tensor{list(value.shape)}" if isinstance(value, Tensor) else repr(value)

    settings = ", ".join(f"{key}={describe(value)}" for key, value in vars(method).items() if not key.startswith("_"))
    return f"{type(method).__name__}({settings})"
