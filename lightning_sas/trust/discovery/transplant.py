"""The causal test of a discovered region: paste it onto probes of other classes, and a control.

For candidate ``c`` and each recipient (a probe predicted, by the given predictions and by the
model now, as a class other than ``c.class_index``; at most ``max_recipients``, a seeded choice),
up to ``trials`` different sources are drawn; each paste copies the source image's pixels under
its region mask onto the recipient at the same place. The share of pastes whose prediction moves
to ``c.class_index`` is its ``flip_rate``.

The *control* paste copies, onto the same place of the same recipient, the pixels under the same
mask shape shifted to a window of the source that covers none of :attr:`Candidate.exclude` (the
source's top-attributed pixels and its object) if there is one (else the least of it), a seeded
choice among those windows. A non-local cue (a colour cast, the source's overall exposure)
travels with any window and flips the controls too; a localised shortcut does not. At the
object's place the control also catches *place* effects: pasting anything there damages the
recipient's own object.

The draws for a candidate come from a local generator seeded by ``seed``, the candidate's class
and first source: its result does not depend on the other candidates measured with it. All
pastes go through the model in batches of ``max_batch``, inside
:func:`~lightning_sas.runtime.model_state.attribution_mode` and ``torch.no_grad()``, so the
model's flags and the global random streams are untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector
from lightning_sas.trust.discovery.candidate import Candidate
from lightning_sas.trust.discovery.region_content import boxes_of
from lightning_sas.validation import require_int, require_tensor, shape_of

__all__ = ["CONTROL_PLACES", "transplant"]

#: Placements of the region's shape tried for each source's control window (the free ones are kept).
CONTROL_PLACES = 64


def transplant(
    model: nn.Module,
    images: Tensor,
    predictions: Tensor,
    candidates: Sequence[Candidate],
    *,
    trials: int = 4,
    seed: int = 0,
    output: OutputSelector = None,
    max_recipients: int = 64,
    max_batch: int = 256,
) -> list[Candidate]:
    """Paste each candidate onto probes predicted as other classes and count the flips (and the
    controls' flips; see the module docstring).

    Args:
        model: The classifier (no side effects: modes, flags and random streams are restored).
        images: The probes ``[N, C, H, W]`` the candidates were found on.
        predictions: ``[N]`` the predicted classes the candidates were found with.
        candidates: From :func:`~lightning_sas.trust.discovery.candidate_regions.propose_candidates`.
        trials: Pastes per recipient (>= 1; fewer when the candidate has fewer sources).
        seed: Seed of the recipients, sources and control windows.
        output: Where the logits are in the model's output (see :mod:`lightning_sas.runtime.outputs`).
        max_recipients: Most recipients per candidate.
        max_batch: Most images per forward.

    Returns:
        New candidates (the same order) with ``flip_rate``, ``probability_change``,
        ``control_flip_rate``, ``control_probability_change``, ``trials`` and ``recipients`` set.

    Raises:
        ValueError: If the shapes do not fit, a setting is out of range, or a candidate's class
            is not a class of the model.
    """
    _check_inputs(
        images, predictions, candidates, trials=trials, seed=seed, max_recipients=max_recipients, max_batch=max_batch
    )
    if not candidates:
        return []
    predicted = predictions.detach().long().cpu()
    with attribution_mode(ClassifierOutput.wrap(model, output)) as forward_module, torch.no_grad():

        def probabilities(batch: Tensor) -> Tensor:
            return torch.cat([forward_module(part).float().softmax(dim=1) for part in batch.split(max_batch)]).cpu()

        before = probabilities(images)
        current = before.argmax(dim=1)
        results = []
        for candidate in candidates:
            if not 0 <= candidate.class_index < before.shape[1]:
                raise ValueError(
                    f"a candidate's `class_index`={candidate.class_index} is not a class of this model "
                    f"({before.shape[1]} classes)."
                )
            plan = _plan(candidate, predicted, current, trials, seed, max_recipients)
            if plan is None:
                results.append(replace(candidate, trials=0, recipients=0))
            else:
                results.append(_measured(candidate, images, plan, before, probabilities, max_batch))
    return results


def _check_inputs(images: Tensor, predictions: Tensor, candidates: Sequence[Candidate], **settings: int) -> None:
    """Raise ``ValueError`` unless the images, predictions, candidates and settings fit together."""
    require_tensor("transplant", "images", images)
    require_tensor("transplant", "predictions", predictions)
    for name, value in settings.items():
        require_int(name, value, minimum=0 if name == "seed" else 1)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"`images` must be a float tensor [N, C, H, W], got {images.dtype} {shape_of(images)}.")
    count, _, height, width = images.shape
    if predictions.shape != (count,) or predictions.is_floating_point():
        raise ValueError(
            f"`predictions` must be integer class indices [{count}], got {predictions.dtype} {shape_of(predictions)}."
        )
    for candidate in candidates:
        if candidate.masks.shape[-2:] != (height, width) or max(candidate.sources, default=count) >= count:
            raise ValueError(
                f"a candidate's masks {shape_of(candidate.masks)} and sources {candidate.sources} do not fit the "
                f"{count} images of {height}x{width} pixels."
            )


def _measured(
    candidate: Candidate,
    images: Tensor,
    plan: tuple[Tensor, Tensor, Tensor],
    before: Tensor,
    probabilities: Callable[[Tensor], Tensor],
    max_batch: int,
) -> Candidate:
    """The candidate with its pastes' (and controls') flip rates and probability changes."""
    recipients, sources, shifts = plan
    target = candidate.class_index
    flipped, change, control_flipped, control_change = [], [], [], []
    for part in torch.arange(len(recipients)).split(max(1, max_batch // 2)):
        real, control = _pasted(images, candidate, recipients[part], sources[part], shifts[part])
        after = probabilities(torch.cat([real, control]))
        start = before[recipients[part], target]
        half = len(part)
        flipped.append(after[:half].argmax(dim=1) == target)
        control_flipped.append(after[half:].argmax(dim=1) == target)
        change.append(after[:half, target] - start)
        control_change.append(after[half:, target] - start)
    return replace(
        candidate,
        flip_rate=float(torch.cat(flipped).float().mean()),
        probability_change=float(torch.cat(change).mean()),
        control_flip_rate=float(torch.cat(control_flipped).float().mean()),
        control_probability_change=float(torch.cat(control_change).mean()),
        trials=len(recipients),
        recipients=len(torch.unique(recipients)),
    )


def _control_shifts(mask: Tensor, avoid: Tensor, generator: torch.Generator) -> Tensor:
    """``[M, 2]`` shifts ``(dy, dx)`` that move ``mask`` to a place inside the image where it covers
    none of ``avoid`` (or the least of it): the best of ``CONTROL_PLACES`` seeded placements.

    Sampled rather than enumerated: an exhaustive search is a correlation with a kernel the size of
    the region, which costs seconds per source on 224-px images; a sample of placements finds a
    free window whenever a fair share of the image is free.
    """
    height, width = mask.shape
    y0, x0, y1, x1 = boxes_of(mask[None])[0].tolist()
    ys = torch.randint(0, height - (y1 - y0) + 1, (CONTROL_PLACES,), generator=generator)
    xs = torch.randint(0, width - (x1 - x0) + 1, (CONTROL_PLACES,), generator=generator)
    pixels = torch.nonzero(mask[y0:y1, x0:x1])  # the shape, relative to its box
    covered = avoid[ys[:, None] + pixels[:, 0], xs[:, None] + pixels[:, 1]].sum(dim=1)
    best = covered == covered.min()
    return torch.stack([ys[best] - y0, xs[best] - x0], dim=1)


def _plan(
    candidate: Candidate, predicted: Tensor, current: Tensor, trials: int, seed: int, max_recipients: int
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(recipients [T], source slots [T], control shifts [T, 2])`` of every paste, or None."""
    eligible = torch.nonzero((predicted != candidate.class_index) & (current != candidate.class_index)).flatten()
    if len(eligible) == 0:
        return None
    sequence = np.random.SeedSequence([seed, candidate.class_index, candidate.sources[0], len(candidate.sources)])
    generator = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    if len(eligible) > max_recipients:
        eligible = eligible[torch.randperm(len(eligible), generator=generator)[:max_recipients]].sort().values
    per_recipient = min(trials, len(candidate.sources))
    exclude = candidate.exclude if candidate.exclude is not None else candidate.masks
    shift_options = [
        _control_shifts(mask, avoid | mask, generator) for mask, avoid in zip(candidate.masks, exclude, strict=True)
    ]
    recipients, slots, shifts = [], [], []
    for recipient in eligible.tolist():
        for slot in torch.randperm(len(candidate.sources), generator=generator)[:per_recipient].tolist():
            options = shift_options[slot]
            recipients.append(recipient)
            slots.append(slot)
            shifts.append(options[int(torch.randint(len(options), (1,), generator=generator))])
    return torch.tensor(recipients), torch.tensor(slots), torch.stack(shifts)


def _pasted(
    images: Tensor, candidate: Candidate, recipients: Tensor, slots: Tensor, shifts: Tensor
) -> tuple[Tensor, Tensor]:
    """The real and the control pastes of one batch of the plan, on the images' device."""
    device = images.device
    sources = torch.tensor(candidate.sources)[slots].to(device)
    masks = candidate.masks[slots].to(device)[:, None]
    source_images = images[sources]
    # Shifted so that the window's pixels sit under the mask: the shift stays inside the image,
    # so the wrap-around of roll never reaches a masked pixel.
    windows = torch.stack(
        [
            torch.roll(image, shifts=(-int(dy), -int(dx)), dims=(1, 2))
            for image, (dy, dx) in zip(source_images, shifts.tolist(), strict=True)
        ]
    )
    targets = images[recipients.to(device)]
    return torch.where(masks, source_images, targets), torch.where(masks, windows, targets)
