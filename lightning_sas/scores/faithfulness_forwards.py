"""The batched forwards behind :func:`lightning_sas.scores.faithfulness.faithfulness_curves`.

Every probe x interior step x {deletion, insertion} x method goes through the model in chunks,
each chunk's composites built on the device from a per-pixel rank tensor (:func:`pixel_ranks`).
The curve endpoints (the image and the baseline) do not depend on the map, so each is
forwarded once per probe and shared by all methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import check_logits
from lightning_sas.methods.chunking import CPU_PIXELS_PER_CHUNK, GPU_MEMORY_SHARE, input_memory_format


def pixel_ranks(maps: Tensor) -> Tensor:
    """The rank of each pixel in its map, 0 = most important (highest value).

    Ties are broken by a stable sort: among equal values the pixel with the lower flat
    (row-major) index ranks first, so the ordering is reproducible on every device and
    equals ``numpy.argsort(-map.ravel(), kind="stable")``. The ranks of a map with a NaN are
    well defined but meaningless; :func:`~lightning_sas.scores.faithfulness.faithfulness_curves`
    reports NaN for such a map.

    Args:
        maps: ``[B, H, W]`` real-valued maps.

    Returns:
        ``[B, H * W]`` int64 tensor: ``ranks[b, p]`` is the position of flat pixel ``p`` in map
        ``b``'s ordering (a permutation of ``0 .. H*W - 1`` per row).

    Raises:
        ValueError: If ``maps`` is not a real ``[B, H, W]`` tensor.

    Example:
        >>> pixel_ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.9]]]))
        tensor([[3, 0, 2, 1]])
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.is_complex():
        described = f"shape {list(maps.shape)} ({maps.dtype})" if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"`maps` must be a real tensor [B, H, W], got {described}.")
    flat = maps.flatten(1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices  # order[b, r] = pixel at rank r
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def stacked_curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    baseline: Tensor,
    maps: Tensor,
    steps: int,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    """``(deletion, insertion)`` curves ``[R, steps + 1]`` for the stacked maps ``[R, H, W]``, ``R = M * B``.

    Args:
        model: The forward module (already in attribution mode, called under ``torch.no_grad()``).
        images: ``[B, C, H, W]`` probes.
        targets: ``[B]`` classes whose probability the curves follow.
        baseline: ``[B, C, H, W]`` images the removed pixels become.
        maps: ``[M * B, H, W]`` maps, row ``method * B + probe``.
        steps: Number of equal fractions of the pixels.
        chunk: Most images in one forward.

    Returns:
        ``(deletion, insertion)``, each ``[M * B, steps + 1]`` float32 (NaN rows for non-finite maps).
    """
    batch = images.shape[0]
    rows = maps.shape[0]
    pixels = images.shape[2] * images.shape[3]
    memory_format = input_memory_format(model, images)
    image_probs, baseline_probs = _endpoint_probabilities(model, images, targets, baseline, chunk, memory_format)

    # round(k * H * W / steps) pixels at step k; Python's round (halves to even), computed
    # on the host once, as the reference loop and Quantus' features_in_step would.
    counts = torch.tensor([round(k * pixels / steps) for k in range(steps + 1)], device=images.device)
    ranks = pixel_ranks(maps)  # [R, P]
    probs = _interior_probabilities(model, images, targets, baseline, ranks, counts, chunk, memory_format)

    first = image_probs.repeat(rows // batch)[:, None]
    last = baseline_probs.repeat(rows // batch)[:, None]
    deletion = torch.cat([first, probs[:, 0], last], dim=1)
    insertion = torch.cat([last, probs[:, 1], first], dim=1)
    # A map with a non-finite value has no ordering: report NaN, never a made-up curve.
    finite = torch.isfinite(maps.flatten(1)).all(dim=1, keepdim=True)
    nan = torch.tensor(float("nan"), device=deletion.device)
    return torch.where(finite, deletion, nan), torch.where(finite, insertion, nan)


def _endpoint_probabilities(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    baseline: Tensor,
    chunk: int,
    memory_format: torch.memory_format,
) -> tuple[Tensor, Tensor]:
    """``[B]`` target probabilities of the images and of the baseline, the curves' endpoints.

    They do not depend on the map (deletion k=0 and insertion k=steps are the image, the other
    two the baseline): one forward each per probe, shared by every method.
    """
    batch = images.shape[0]
    ends = torch.cat([images, baseline])
    logits = torch.cat([model(part) for part in ends.contiguous(memory_format=memory_format).split(chunk)])
    check_logits(logits[:batch], targets)
    end_probs = _target_probabilities(logits, targets.repeat(2))
    return end_probs[:batch], end_probs[batch:]


def _interior_probabilities(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    baseline: Tensor,
    ranks: Tensor,
    counts: Tensor,
    chunk: int,
    memory_format: torch.memory_format,
) -> Tensor:
    """``[R, 2, steps - 1]`` target probabilities at the interior steps, deletion then insertion.

    A flat item list (row r = method * B + probe, kind, interior step k = 1 .. steps-1), all on
    the device: each chunk is a slice of it, so the hot loop has no per-image Python work.
    """
    batch, _, height, width = images.shape
    rows = ranks.shape[0]
    interior = counts.shape[0] - 2
    item = torch.arange(rows * 2 * interior, device=images.device)
    # max(.., 1): with steps == 1 there are no interior items, and no division by zero.
    row = item // max(2 * interior, 1)
    within = item % max(2 * interior, 1)
    is_deletion = within < interior
    step = within % max(interior, 1) + 1
    probe = row % batch
    probs = torch.empty(item.shape[0], device=images.device)
    for start in range(0, item.shape[0], chunk):
        part = slice(start, start + chunk)
        # Deletion keeps the image where rank >= count; insertion keeps it where rank < count.
        keep_image = (ranks[row[part]] < counts[step[part]][:, None]) != is_deletion[part, None]
        composites = torch.where(keep_image.view(-1, 1, height, width), images[probe[part]], baseline[probe[part]])
        composites = composites.contiguous(memory_format=memory_format)
        probs[part] = _target_probabilities(model(composites), targets[probe[part]])
    return probs.view(rows, 2, interior)


def _target_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    # float32 softmax: under autocast the logits may be bfloat16, whose 8-bit mantissa would
    # quantise probabilities near 1 to steps of 0.004.
    return logits.float().softmax(dim=1).gather(1, targets[:, None])[:, 0]


def auto_chunk(model: nn.Module, images: Tensor, total: int) -> int:
    """Images per forward when ``max_batch`` is None, at most ``total``.

    On the CPU a pixel budget; on CUDA a share of the free memory over what one image's
    forward (and its chunk tensors) needs.
    """
    channels, height, width = images.shape[1:]
    pixels = height * width
    if images.device.type != "cuda":
        return max(1, min(total, CPU_PIXELS_PER_CHUNK // pixels))
    # What one image's forward keeps alive for a backward (input requiring grad) bounds from
    # above what a no-grad forward needs at its peak; one-off host syncs, before any chunk.
    probe = images[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        before = torch.cuda.memory_allocated(images.device)
        logits = model(probe)
        per_image = max(1, torch.cuda.memory_allocated(images.device) - before)
    del logits, probe
    # Plus each chunk's own tensors: gathered int64 ranks, the bool mask, two image gathers
    # and the composite.
    per_image += pixels * (8 + 1) + 3 * channels * pixels * images.element_size()
    free, _ = torch.cuda.mem_get_info(images.device)
    return max(1, min(total, int(GPU_MEMORY_SHARE * free / per_image)))
