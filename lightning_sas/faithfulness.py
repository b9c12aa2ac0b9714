"""Faithfulness of attribution maps: the deletion and insertion curves of RISE.

Petsiuk et al. (2018), "RISE: Randomized Input Sampling for Explanation of Black-box Models",
the evaluation the SaS paper reports. A map ranks the pixels (higher = more important). The
*deletion* curve replaces the top-ranked pixels (all channels) by a baseline in ``steps``
equal fractions ``k / steps`` of the image; the *insertion* curve starts from the baseline and
puts the top-ranked pixels of the image back in the same fractions. Step ``k`` moves
``round(k * H * W / steps)`` pixels. Each point is the softmax probability of the target
class; the AUC is the trapezoidal area under the curve over the fraction axis ``[0, 1]``.
A faithful map has a low deletion AUC (the score collapses as soon as its top pixels go) and
a high insertion AUC (its top pixels alone restore the score).

The pure functions (:func:`pixel_ranks`, :func:`curve_auc`, :func:`faithfulness_curves`) do
the work; :class:`Faithfulness` only holds a configuration, like a torchmetrics metric.

Batched: every probe × interior step × {deletion, insertion} × method goes through the model
in chunks of at most ``max_batch`` images, each chunk's composites built on the device from
a per-pixel rank tensor. The curve endpoints are the image itself and the baseline, which do
not depend on the map, so each is forwarded once per probe and shared by all methods.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sas.arguments import require_max_batch
from lightning_sas.chunks import retry_out_of_memory
from lightning_sas.methods.base import check_logits, validate_images_and_targets
from lightning_sas.methods.batching import CPU_PIXELS_PER_CHUNK, GPU_MEMORY_SHARE, input_memory_format
from lightning_sas.methods.sas import SaS
from lightning_sas.model_state import attribution_mode
from lightning_sas.outputs import ClassifierOutput, OutputSelector, check_output_selector

#: What the removed pixels become: ``"blur"`` (the SaS blur of the image), ``"zero"``, a
#: number, or a tensor broadcastable to the images ``[B, C, H, W]``.
Baseline = str | float | Tensor

BASELINE_KINDS = ("blur", "zero")


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Deletion and insertion curves of one method's maps, one row per probe.

    Point ``k`` of a curve is at fraction ``k / steps`` of the pixels moved. A probe whose map
    has a non-finite value has all-NaN curves (and NaN AUCs).

    Attributes:
        deletion: ``[B, steps + 1]`` float32 softmax probability of the target while the
            top-ranked pixels are replaced by the baseline (starts at the image).
        insertion: ``[B, steps + 1]`` float32 probability while the top-ranked pixels of the
            image are put back into the baseline (starts at the baseline).
    """

    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """``[B]`` area under the deletion curve over ``[0, 1]``; lower is more faithful."""
        return curve_auc(self.deletion)

    @property
    def insertion_auc(self) -> Tensor:
        """``[B]`` area under the insertion curve over ``[0, 1]``; higher is more faithful."""
        return curve_auc(self.insertion)


def curve_auc(curves: Tensor) -> Tensor:
    """Trapezoidal area under curves sampled at ``S + 1`` equally spaced points of ``[0, 1]``.

    Args:
        curves: ``[..., S + 1]`` values, ``S >= 1`` (e.g. ``[B, steps + 1]``).

    Returns:
        ``[...]`` areas: the mean of the averages of adjacent points (NaN where a curve has NaN).

    Raises:
        ValueError: If ``curves`` is not a floating tensor with at least two points per curve.

    Example:
        >>> curve_auc(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
        tensor([0.5000, 1.0000])
    """
    if not isinstance(curves, Tensor) or not curves.is_floating_point() or curves.dim() < 1 or curves.shape[-1] < 2:
        described = (
            f"shape {list(curves.shape)} ({curves.dtype})" if isinstance(curves, Tensor) else type(curves).__name__
        )
        raise ValueError(f"`curves` must be a floating tensor [..., S + 1] with S >= 1, got {described}.")
    # Equal spacing 1/S: the trapezoid rule is the mean of the adjacent-pair averages.
    return ((curves[..., :-1] + curves[..., 1:]) / 2).mean(dim=-1)


def pixel_ranks(maps: Tensor) -> Tensor:
    """The rank of each pixel in its map, 0 = most important (highest value).

    Ties are broken by a stable sort: among equal values the pixel with the lower flat
    (row-major) index ranks first, so the ordering is reproducible on every device and
    equals ``numpy.argsort(-map.ravel(), kind="stable")``. The ranks of a map with a NaN are
    well defined but meaningless; :func:`faithfulness_curves` reports NaN for such a map.

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


def faithfulness_curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    maps: Mapping[str, Tensor],
    *,
    steps: int = 20,
    baseline: Baseline = "blur",
    max_batch: int | None = None,
    output: OutputSelector = None,
) -> dict[str, FaithfulnessCurves]:
    """Deletion and insertion curves of several methods' maps of the same probes, batched.

    The model is run in :func:`~lightning_sas.model_state.attribution_mode` under
    ``torch.no_grad()``: eval mode, parameter flags, grad / inference mode and RNG states are
    restored afterwards, so this can run inside Lightning's validation loop
    (``torch.inference_mode()``) and under ``torch.autocast`` (the softmax is taken in
    float32; the baseline is built in float32 whatever the autocast). Out of memory halves
    the chunk and starts again, down to one image per forward.

    Args:
        model: A classifier returning logits ``[B, num_classes]``, a single binary logit
            ``[B]`` / ``[B, 1]``, or a tuple/list/dict holding them (see ``output``).
        images: ``[B, C, H, W]`` floating tensor, normalised as the model expects.
        targets: ``[B]`` integer tensor: the class whose probability the curves follow.
        maps: Method name -> ``[B, H, W]`` map of each probe (higher = more important), e.g.
            ``{"sas": sas_maps, "gradcam": gradcam_maps}``.
        steps: Number of equal fractions; curves have ``steps + 1`` points.
        baseline: ``"blur"`` (``SaS().baseline(images)``: the Gaussian blur SaS inserts into,
            kernel scaled with the image side), ``"zero"``, a number, or a tensor
            broadcastable to ``images``.
        max_batch: Most images in one forward. ``None``: a pixel budget on the CPU
            (``256 * 64 * 64`` pixels per chunk) or a share of the free memory on CUDA.
        output: Where the logits are in the model's output (an index, key or callable), as in
            :class:`~lightning_sas.outputs.ClassifierOutput`; ignored if ``model`` already is one.

    Returns:
        Method name -> :class:`FaithfulnessCurves` (float32, on ``images.device``).

    Raises:
        TypeError: If ``model``, ``images``, ``targets``, ``maps`` or ``output`` has the wrong type.
        ValueError: If a shape disagrees, a target is out of range for the model's outputs,
            ``steps``, ``baseline`` or ``max_batch`` is invalid, or the model's output is not
            class logits.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> images, targets = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
        >>> curves = faithfulness_curves(model, images, targets, {"random": torch.rand(2, 16, 16)}, steps=8)
        >>> curves["random"].deletion.shape, curves["random"].insertion_auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
        >>> bool((curves["random"].deletion[:, 0] == curves["random"].insertion[:, -1]).all())  # both: the image
        True
    """
    _check_steps(steps)
    _check_baseline(baseline)
    require_max_batch(max_batch)
    check_output_selector(output)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    images, targets = validate_images_and_targets(images, targets)
    names, stacked = _stack_maps(maps, images)
    # Forwards go to the module holding the weights, never through a DDP wrapper's hooks.
    adapter = ClassifierOutput.wrap(model, output)

    with attribution_mode(adapter) as forward_module:
        total = images.shape[0] * (2 + 2 * len(names) * (steps - 1))
        chunk = max_batch or _auto_chunk(forward_module, images, total)
        with torch.no_grad():
            base = _baseline_images(images, baseline)
            deletion, insertion = retry_out_of_memory(
                lambda size: _curves(forward_module, images, targets, base, stacked, steps, size),
                chunk,
                images.device,
                "Faithfulness",
            )
    batch = images.shape[0]
    return {
        name: FaithfulnessCurves(
            deletion=deletion[i * batch : (i + 1) * batch], insertion=insertion[i * batch : (i + 1) * batch]
        )
        for i, name in enumerate(names)
    }


class Faithfulness:
    """Deletion / insertion faithfulness with a fixed configuration (see :func:`faithfulness_curves`).

    Args:
        steps: Number of equal fractions of the pixels; curves have ``steps + 1`` points.
        baseline: ``"blur"`` (default, the SaS blur), ``"zero"``, a number, or a tensor
            broadcastable to the images.
        max_batch: Most images in one model forward; ``None`` picks a chunk automatically.

    Raises:
        ValueError: If an argument is invalid (the message names it, its value and what is expected).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
        >>> metric = Faithfulness(steps=4, baseline="zero")
        >>> curves = metric(model, torch.rand(2, 3, 8, 8), torch.tensor([2, 0]), {"a": torch.rand(2, 8, 8)})
        >>> curves["a"].deletion.shape, curves["a"].deletion_auc.dtype
        (torch.Size([2, 5]), torch.float32)
    """

    def __init__(self, steps: int = 20, baseline: Baseline = "blur", max_batch: int | None = None) -> None:
        _check_steps(steps)
        _check_baseline(baseline)
        require_max_batch(max_batch)
        self.steps = steps
        self.baseline = baseline
        self.max_batch = max_batch

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        maps_by_method: Mapping[str, Tensor],
        output: OutputSelector = None,
    ) -> dict[str, FaithfulnessCurves]:
        """Curves of each method's maps with this configuration.

        Args:
            model: The classifier (logits, a single binary logit, or a structure ``output`` selects from).
            images: ``[B, C, H, W]`` floating tensor.
            targets: ``[B]`` integer tensor.
            maps_by_method: Method name -> ``[B, H, W]`` maps of the probes.
            output: Where the logits are in the model's output (see :func:`faithfulness_curves`).

        Returns:
            Method name -> :class:`FaithfulnessCurves`.

        Raises:
            TypeError, ValueError: As :func:`faithfulness_curves`.
        """
        return faithfulness_curves(
            model,
            images,
            targets,
            maps_by_method,
            steps=self.steps,
            baseline=self.baseline,
            max_batch=self.max_batch,
            output=output,
        )

    def __repr__(self) -> str:
        baseline = f"Tensor{list(self.baseline.shape)}" if isinstance(self.baseline, Tensor) else repr(self.baseline)
        return f"Faithfulness(steps={self.steps}, baseline={baseline}, max_batch={self.max_batch})"


# ---------------------------------------------------------------------------- the batched core


def _curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    baseline: Tensor,
    maps: Tensor,
    steps: int,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    """``(deletion, insertion)`` curves ``[R, steps + 1]`` for the stacked maps ``[R, H, W]``, ``R = M * B``."""
    batch, _, height, width = images.shape
    rows = maps.shape[0]
    pixels = height * width

    # Endpoints: the image (deletion k=0, insertion k=steps) and the baseline (the other two)
    # do not depend on the map: one forward each per probe, shared by every method.
    ends = torch.cat([images, baseline])
    memory_format = input_memory_format(model, images)
    logits = torch.cat([model(part) for part in ends.contiguous(memory_format=memory_format).split(chunk)])
    check_logits(logits[:batch], targets)
    end_probs = _target_probabilities(logits, targets.repeat(2))
    image_probs, baseline_probs = end_probs[:batch], end_probs[batch:]

    # round(k * H * W / steps) pixels at step k; Python's round (halves to even), computed
    # on the host once, as the reference loop and Quantus' features_in_step would.
    counts = torch.tensor([round(k * pixels / steps) for k in range(steps + 1)], device=images.device)
    ranks = pixel_ranks(maps)  # [R, P]

    # Flat item list (row r = method * B + probe, kind, interior step k = 1 .. steps-1), all
    # on the device: each chunk is a slice of it, so the hot loop has no per-image Python work.
    interior = steps - 1
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

    probs = probs.view(rows, 2, interior)
    first = image_probs.repeat(rows // batch)[:, None]
    last = baseline_probs.repeat(rows // batch)[:, None]
    deletion = torch.cat([first, probs[:, 0], last], dim=1)
    insertion = torch.cat([last, probs[:, 1], first], dim=1)
    # A map with a non-finite value has no ordering: report NaN, never a made-up curve.
    finite = torch.isfinite(maps.flatten(1)).all(dim=1, keepdim=True)
    nan = torch.tensor(float("nan"), device=deletion.device)
    return torch.where(finite, deletion, nan), torch.where(finite, insertion, nan)


def _target_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    # float32 softmax: under autocast the logits may be bfloat16, whose 8-bit mantissa would
    # quantise probabilities near 1 to steps of 0.004.
    return logits.float().softmax(dim=1).gather(1, targets[:, None])[:, 0]


def _baseline_images(images: Tensor, baseline: Baseline) -> Tensor:
    """The baseline ``[B, C, H, W]`` in the images' dtype, on their device."""
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
        # The caller's autocast would run the blur's convolutions in bfloat16/float16; the
        # baseline is data, not model computation, so build it at the images' precision.
        with torch.autocast(device_type=images.device.type, enabled=False):
            return SaS().baseline(images).to(images.dtype)
    return torch.full_like(images, float(baseline))


def _stack_maps(maps: Mapping[str, Tensor], images: Tensor) -> tuple[list[str], Tensor]:
    """Method names and their maps stacked ``[M * B, H, W]`` on the images' device."""
    expected = [images.shape[0], *images.shape[2:]]
    if not isinstance(maps, Mapping):
        hint = ' (wrap a single tensor as {"name": maps})' if isinstance(maps, Tensor) else ""
        raise TypeError(
            f"`maps` must be a mapping of method name -> [B, H, W] tensor{hint}, got {type(maps).__name__}."
        )
    if not maps:
        raise ValueError("`maps` must hold at least one method's maps, got an empty mapping.")
    names = list(maps)
    checked = []
    for name in names:
        value = maps[name]
        if not isinstance(value, Tensor) or value.is_complex():
            described = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"`maps[{name!r}]` must be a real tensor {expected} ([B, H, W]), got {described}.")
        if list(value.shape) != expected:
            raise ValueError(
                f"`maps[{name!r}]` must have shape {expected} ([B, H, W] of the images {list(images.shape)}), "
                f"got shape {list(value.shape)}."
            )
        checked.append(value.detach().to(images.device))
    # At least float32 (for the NaN check); never lower a float64 map's precision, which
    # could turn distinct values into ties and change the ordering.
    dtype = functools.reduce(torch.promote_types, (value.dtype for value in checked), torch.float32)
    return names, torch.cat([value.to(dtype) for value in checked])


def _auto_chunk(model: nn.Module, images: Tensor, total: int) -> int:
    """Images per forward when ``max_batch`` is None."""
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


# ---------------------------------------------------------------------------- argument checks


def _check_steps(steps: object) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")


def _check_baseline(baseline: object) -> None:
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
