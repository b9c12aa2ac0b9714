"""Chunked forwards: many inputs through the model a chunk at a time, surviving out-of-memory.

SaS, the faithfulness curves and the many-forward methods (SmoothGrad, Integrated Gradients,
GradientSHAP, occlusion, LIME) push many composites or variants of each probe through the
model. :func:`target_scores_in_chunks` runs all variants of all probes in chunks of at most
``chunk`` images per forward, building each chunk only when it is needed (memory holds one chunk
of inputs, not all of them). When a chunk does not fit, :func:`retry_out_of_memory` retries the
whole attempt with half the chunk, down to one image per forward. Under a distributed audit
every rank takes the same chunk and retries together (see
:mod:`lightning_sas.runtime.distributed`), so all ranks make the same forward calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import check_logits
from lightning_sas.runtime.distributed import FailedOnAnotherRank, agreed_minimum, any_rank, tell_the_other_ranks
from lightning_sas.runtime.progress import advance

T = TypeVar("T")


def retry_out_of_memory(attempt: Callable[[int], T], chunk: int, device: torch.device, what: str) -> T:
    """``attempt(chunk)``, retried with half the chunk after an out-of-memory error.

    Under :func:`~lightning_sas.runtime.distributed.all_ranks_together` the ranks agree after every
    attempt, on *any* error: a rank that raises tells the others before raising, and they raise
    :class:`~lightning_sas.runtime.distributed.FailedOnAnotherRank`, so no rank waits for another.

    Args:
        attempt: Runs the whole computation with at most ``chunk`` images per forward.
        chunk: The first chunk size to try (agreed across ranks first).
        device: Where the computation runs (for the agreement and to empty the CUDA cache).
        what: The computation's name, for the warning.

    Returns:
        What ``attempt`` returned.

    Raises:
        torch.OutOfMemoryError: If even one image per forward does not fit.
        FailedOnAnotherRank: If the attempt failed on another rank only.
    """
    try:
        return _retried(attempt, chunk, device, what)
    except FailedOnAnotherRank:
        raise FailedOnAnotherRank(f"{what} failed on another rank") from None


def _retried(attempt: Callable[[int], T], chunk: int, device: torch.device, what: str) -> T:
    chunk = agreed_minimum(chunk, device)
    while True:
        out_of_memory = False
        result = None
        try:
            result = attempt(chunk)
        except torch.OutOfMemoryError as error:
            if chunk <= 1:
                tell_the_other_ranks(error, device)
                raise
            out_of_memory = True
        except FailedOnAnotherRank:
            raise  # the ranks already agree: this failure was the agreement
        except Exception as error:  # any error: the other ranks must learn it before it is raised
            tell_the_other_ranks(error, device)
            raise
        # Outside the except block, so the failed attempt's tensors (held by the traceback)
        # are freed before the cache is emptied and the retry starts.
        if not any_rank(out_of_memory, device):
            return result  # type: ignore[return-value]
        del result
        chunk = max(1, agreed_minimum(chunk // 2, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"{what} ran out of memory; retrying with max_batch={chunk}.", stacklevel=4)


#: Without ``max_batch``, CPU chunks hold about this many pixels (256 images of 64x64, as
#: SaS's). Measured on the idle 2-core machine, ResNet-18 at 64 px: GradientSHAP's 400 variants
#: took 1.77-1.90 s in chunks of 50 to 400 alike; occlusion's 1,800 forwards 2.96 s in chunks of
#: 256 and 3.78 s in chunks of 512.
CPU_PIXELS_PER_CHUNK = 256 * 64 * 64
#: Share of free GPU memory one chunk's activations may take when ``max_batch`` is None.
GPU_MEMORY_SHARE = 0.5

#: ``build(start, stop) -> (inputs [n, C, H, W], targets [n])`` for variants ``start .. stop-1``.
VariantBuilder = Callable[[int, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class GradientSum:
    """Sum the variants' input gradients per output slot, chunk by chunk, instead of keeping them all.

    ``slots[owner[v]] += value[v]`` where ``(owner, value) = contribution(start, stop, gradients)``
    for each chunk's variants ``start .. stop - 1``: e.g. SmoothGrad adds ``|g| / samples`` to
    the variant's image. Memory then holds one chunk of gradients and the ``[slots, ...]``
    sums, whatever the number of variants.

    Attributes:
        slots: Number of output slots (usually the number of images).
        contribution: ``(start, stop, gradients [n, C, H, W] float32) -> (owner [n] int64, value [n, ...])``.
    """

    slots: int
    contribution: Callable[[int, int, Tensor], tuple[Tensor, Tensor]]


def local_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: draws that leave the global RNG streams alone.

    Draws are made on the CPU and moved to the device, so a seed gives the same numbers on
    every device, and image ``i``'s draws do not depend on the other images in the batch
    when callers draw per image in a fixed order.
    """
    return torch.Generator().manual_seed(seed)


def auto_chunk(
    model: nn.Module,
    example: Tensor,
    total: int,
    *,
    with_gradient: bool,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> int:
    """Images per forward when the method's ``max_batch`` is None.

    CPU: a fixed pixel budget. CUDA: a share of the free memory, measured from what one
    image's forward keeps alive (one-off host syncs, before any chunk runs).

    Args:
        model: The forward module (in attribution mode).
        example: One input ``[1, C, H, W]`` as the chunks will hold.
        total: Number of variants to run; the chunk never exceeds it.
        with_gradient: Whether the chunks are differentiated (the backward needs memory too).
        forward: ``forward(model, inputs) -> logits`` as the chunks will run it (e.g. under
            autocast); ``model(inputs)`` if None.
    """
    pixels = example.shape[-2] * example.shape[-1]
    if example.device.type != "cuda":
        return max(1, min(total, CPU_PIXELS_PER_CHUNK // pixels))
    before = torch.cuda.memory_allocated(example.device)
    with torch.set_grad_enabled(with_gradient):
        logits = (forward or (lambda module, inputs: module(inputs)))(
            model, example.detach().requires_grad_(with_gradient)
        )
    per_image = max(1, torch.cuda.memory_allocated(example.device) - before)
    del logits
    free, _ = torch.cuda.mem_get_info(example.device)
    # x3: the backward needs about twice the saved activations on top of them.
    return max(1, min(total, int(GPU_MEMORY_SHARE * free / ((3 if with_gradient else 1) * per_image))))


def input_memory_format(model: nn.Module, images: Tensor) -> torch.memory_format:
    """The memory format to build a method's model inputs in: channels-last only where the caller uses it.

    oneDNN and cuDNN run convolutions faster in NHWC (1.25x on ResNet-18 at 64 px on the CPU),
    but a model that flattens a convolution's output with ``x.view(x.size(0), -1)`` fails on
    NHWC activations. A model whose 4-D parameters are channels-last already makes NHWC
    activations (and so cannot be doing that), and channels-last images are the caller's
    choice; otherwise inputs stay contiguous (NCHW), as the model sees them in training.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> input_memory_format(conv, torch.zeros(1, 3, 8, 8))
        torch.contiguous_format
        >>> input_memory_format(conv.to(memory_format=torch.channels_last), torch.zeros(1, 3, 8, 8))
        torch.channels_last
    """

    def is_channels_last(tensor: Tensor) -> bool:
        # A tensor both layouts describe (C == 1, or 1x1 spatial) says nothing about the choice.
        channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        return channels_last and not tensor.is_contiguous()

    if is_channels_last(images) or any(is_channels_last(parameter) for parameter in model.parameters()):
        return torch.channels_last
    return torch.contiguous_format


def target_scores_in_chunks(
    model: nn.Module,
    build: VariantBuilder,
    total: int,
    *,
    chunk: int,
    image_targets: Tensor,
    what: str,
    device: torch.device,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    gradient_sum: GradientSum | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Target logits of ``total`` variants (and their summed input gradients), ``chunk`` at a time.

    Args:
        model: The forward module (in attribution mode), returning ``[n, num_classes]`` logits.
        build: Makes the inputs and targets of variants ``start .. stop - 1`` on ``device``.
        total: Number of variants.
        chunk: First chunk size to try (halved on out-of-memory, agreed across ranks).
        image_targets: ``[B]`` the targets of the images the variants come from, checked once
            against the first chunk's class count (a chunk may hold one image's variants only).
        what: The method's name, for the out-of-memory warning.
        device: Where the variants live.
        forward: ``forward(model, inputs) -> logits`` (e.g. under autocast); ``model(inputs)``
            if None.
        gradient_sum: Also differentiate each chunk's scores with respect to its inputs and
            sum the gradients per slot as they come (see :class:`GradientSum`).

    Returns:
        ``(scores [total] float32, sums [slots, ...] or None)``: the target logits (a variant
        with a non-finite logit keeps its non-finite score, so the caller can turn its
        probe's map into NaN) and, with ``gradient_sum``, the gradient sums.

    Raises:
        ValueError: If an image's target is out of range for the model's outputs.
    """
    run = forward or (lambda module, inputs: module(inputs))

    def attempt(size: int) -> tuple[Tensor, Tensor | None]:
        scores: list[Tensor] = []
        sums: Tensor | None = None  # allocated per attempt: a retry after out-of-memory starts from zero
        for start in range(0, total, size):
            inputs, targets = build(start, min(total, start + size))
            with torch.set_grad_enabled(gradient_sum is not None):
                inputs = inputs.detach().requires_grad_(gradient_sum is not None)
                logits = run(model, inputs)
                if start == 0:
                    check_logits(logits, image_targets)
                selected = logits.float().gather(1, targets[:, None])[:, 0]
            if gradient_sum is not None:
                sums = _add_chunk_gradients(gradient_sum, sums, selected, inputs, start)
            scores.append(selected.detach())
            advance(inputs.shape[0])
        return torch.cat(scores), sums

    return retry_out_of_memory(attempt, chunk, device, what)


def _add_chunk_gradients(
    gradient_sum: GradientSum, sums: Tensor | None, selected: Tensor, inputs: Tensor, start: int
) -> Tensor:
    """``sums`` (allocated on the first chunk) plus the contributions of the chunk starting at variant ``start``.

    ``selected`` are the chunk's target scores, ``inputs`` its inputs (which require grad).
    """
    # Per-variant targets: summing keeps each variant's gradient separate.
    (gradient,) = torch.autograd.grad(selected.sum(), inputs)
    owner, value = gradient_sum.contribution(start, start + inputs.shape[0], gradient.float())
    if sums is None:
        sums = value.new_zeros((gradient_sum.slots, *value.shape[1:]))
    sums.index_add_(0, owner, value)
    return sums


def image_scores(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    chunk: int,
    what: str,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> Tensor:
    """Target scores ``[B]`` (float32) of the images themselves, ``chunk`` at a time, targets checked.

    Raises:
        ValueError: If a target is out of range for the model's outputs.
    """
    scores, _ = target_scores_in_chunks(
        model,
        lambda start, stop: (images[start:stop], targets[start:stop]),
        images.shape[0],
        chunk=chunk,
        image_targets=targets,
        what=what,
        device=images.device,
        forward=forward,
    )
    return scores
