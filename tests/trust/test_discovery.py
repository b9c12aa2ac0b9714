"""Discovery: find a localised shortcut nobody named, and tell it from a non-local cue and from the object."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_sas.methods import Saliency
from lightning_sas.trust.discovery import discover, propose_candidates, transplant

SIZE = 16
CORNER = (0.0, 0.0, 0.25, 0.25)


def scenes(count: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Dark noisy images with a 6x6 object near the middle (brighter for odd probes) and the object masks.

    Returns:
        ``(images [N, 3, 16, 16] in [0, 1], object masks [N, 16, 16] bool, bright-object flags [N])``.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.3
    objects = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    bright = torch.arange(count) % 2 == 1
    for index in range(count):
        y, x = (5 + torch.randint(-1, 2, (2,), generator=generator)).tolist()
        objects[index, y : y + 6, x : x + 6] = True
        level = 0.6 + 0.3 * float(bright[index]) + 0.05 * float(torch.rand(1, generator=generator))
        images[index, :, y : y + 6, x : x + 6] = level + 0.05 * torch.rand(3, 6, 6, generator=generator)
    return images, objects, bright


def with_stickers(images: Tensor, every: int = 2, corners: bool = False) -> tuple[Tensor, Tensor]:
    """A white 4x4 sticker on every ``every``-th probe, in the top-left corner (or cycling through
    the four corners); returns the images and the sticker masks."""
    stickered, masks = images.clone(), torch.zeros(images.shape[0], SIZE, SIZE, dtype=torch.bool)
    for number, index in enumerate(range(0, images.shape[0], every)):
        corner = number % 4 if corners else 0
        y, x = (0 if corner < 2 else SIZE - 4), (0 if corner % 2 == 0 else SIZE - 4)
        masks[index, y : y + 4, x : x + 4] = True
    stickered[masks[:, None].expand_as(images)] = 1.0
    return stickered, masks


class Sticker(nn.Module):
    """Class 1 iff a corner (the top-left one, or any with ``any_corner``) is bright: a pure shortcut."""

    def __init__(self, any_corner: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.dropout = nn.Dropout(0.5)  # identity in eval mode, random in train mode
        self.any_corner = any_corner

    def forward(self, images: Tensor) -> Tensor:
        corners = [images[:, :, :4, :4]]
        if self.any_corner:
            corners += [images[:, :, :4, -4:], images[:, :, -4:, :4], images[:, :, -4:, -4:]]
        brightness = torch.stack([corner.mean(dim=(1, 2, 3)) for corner in corners], dim=1).amax(dim=1)
        logit = self.dropout(self.scale * (brightness - 0.5))
        return torch.stack([-logit, logit], dim=1)


class BluishWindow(nn.Module):
    """Class 1 iff some 4x4 window is bluish: a colour cast over the whole image is seen anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))

    def forward(self, images: Tensor) -> Tensor:
        excess = nn.functional.avg_pool2d((images[:, 2] - images[:, 0])[:, None], 4, stride=1)
        logit = self.scale * (excess.flatten(1).amax(dim=1) - 0.2)
        return torch.stack([-logit, logit], dim=1)


class ObjectBrightness(nn.Module):
    """Class 1 iff the bright pixels (the object) are bright enough: it follows the object only."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, images: Tensor) -> Tensor:
        energy = torch.relu(images - 0.5).mean(dim=1).sum(dim=(1, 2))
        logit = self.scale * (energy - 36 * 0.25)
        return torch.stack([-logit, logit], dim=1)


def explained(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """The model's predictions (in eval mode) and Saliency maps for them."""
    with torch.no_grad():
        predictions = model.eval()(images).argmax(dim=1)
    return Saliency().attribute(model, images, predictions), predictions


def test_a_sticker_shortcut_is_found_at_its_place_and_confirmed_by_the_transplant() -> None:
    images, objects, _ = scenes()
    images, stickers = with_stickers(images)
    model = Sticker()
    maps, predictions = explained(model, images)
    found = discover(model, images, maps, predictions)
    top = found.candidates[0]
    assert top.class_index == 1 and top.box == CORNER
    assert top.sources == torch.nonzero(stickers.flatten(1).any(dim=1)).flatten().tolist()
    assert bool((top.masks == stickers[top.sources]).all())  # exactly the sticker, in every source
    assert top.recurrence == 1.0 and top.consistency > 0.9
    assert top.flip_rate == 1.0 and top.probability_change > 0.9 and top.trials > 0
    # The control window comes from elsewhere in the source (here: anywhere but the top pixels).
    assert top.control_flip_rate <= 0.25
    assert top.suspicion == max(candidate.suspicion for candidate in found.candidates)

    # With the object masks the control also avoids the (bright) object: it never flips.
    found = discover(model, images, maps, predictions, objects)
    top = found.candidates[0]
    assert top.box == CORNER and top.flip_rate == 1.0 and top.control_flip_rate == 0.0
    assert top.outside_object == 1.0
    assert found.outside_enrichment > 0.3 and found.object_enrichment < 0.1
    assert found.outside_share is not None and float(found.outside_share[stickers.flatten(1).any(1)].min()) > 0.4
    assert found.object_area is not None and torch.allclose(found.object_area, torch.full((32,), 36 / 256))


def test_the_labels_say_how_often_the_probes_a_region_is_on_are_labelled_as_its_class() -> None:
    images, _, _ = scenes()
    images, stickers = with_stickers(images)
    model = Sticker()
    maps, predictions = explained(model, images)
    labels = torch.arange(32) // 2 % 2  # the stickered probes 0, 2, 4, ...: labelled 0, 1, 0, 1, ...
    labels[0] = -1  # unknown
    top = discover(model, images, maps, predictions, labels=labels).candidates[0]
    assert top.class_index == 1 and top.labelled_sources == 15
    assert top.source_accuracy == pytest.approx(8 / 15)  # the model's accuracy where the sticker is
    assert top.to_dict()["source_accuracy"] == pytest.approx(8 / 15) and "labelled as its class" in top.summary()
    unlabelled = discover(model, images, maps, predictions, labels=torch.full((32,), -1)).candidates[0]
    assert math.isnan(unlabelled.source_accuracy) and unlabelled.labelled_sources == 0
    assert unlabelled.to_dict()["source_accuracy"] is None
    assert math.isnan(discover(model, images, maps, predictions).candidates[0].source_accuracy)


def test_a_sticker_in_any_corner_is_one_candidate_seen_at_several_places() -> None:
    images, _, _ = scenes()
    images, stickers = with_stickers(images, corners=True)
    model = Sticker(any_corner=True)
    maps, predictions = explained(model, images)
    top = discover(model, images, maps, predictions).candidates[0]
    assert top.class_index == 1 and len(top.places) == 4
    assert top.sources == torch.nonzero(stickers.flatten(1).any(dim=1)).flatten().tolist()
    assert top.spread > 0.3 and top.flip_rate == 1.0 and top.control_flip_rate <= 0.25


def test_a_colour_cast_flips_the_controls_too() -> None:
    images, _, bright = scenes()
    images[bright, 2] = (images[bright, 2] + 0.3).clamp(max=1.0)  # a blue cast over the whole image
    model = BluishWindow()
    maps, predictions = explained(model, images)
    assert torch.equal(predictions, bright.long())
    found = discover(model, images, maps, predictions)
    cast = next(candidate for candidate in found.candidates if candidate.class_index == 1)
    assert cast.flip_rate >= 0.9 and cast.control_flip_rate >= 0.6  # any window of the source carries it
    assert cast.suspicion < 0.3


def test_a_model_that_follows_the_object_leaves_no_candidate_outside_it() -> None:
    images, objects, bright = scenes()
    model = ObjectBrightness()
    maps, predictions = explained(model, images)
    assert torch.equal(predictions, bright.long())
    found = discover(model, images, maps, predictions, objects)
    assert found.candidates == []
    assert found.outside_share is not None and float(found.outside_share.max()) < 0.05
    assert found.outside_enrichment < -1.0 and found.object_enrichment > 0.95
    # Without the masks the object itself is the recurring region (whether it is a shortcut is for
    # the fields and the rule to tell); it is never off the object.
    assert all(
        math.isnan(candidate.outside_object) for candidate in discover(model, images, maps, predictions).candidates
    )


def test_transplant_in_batches_equals_one_paste_at_a_time_and_needs_recipients() -> None:
    images, _, _ = scenes(count=16)
    images, _ = with_stickers(images)
    model = Sticker()
    maps, predictions = explained(model, images)
    candidates = propose_candidates(maps, predictions, images)
    assert all(math.isnan(c.flip_rate) and c.trials == 0 for c in candidates)  # not transplanted yet
    together = transplant(model, images, predictions, candidates, seed=3)
    alone = transplant(model, images, predictions, candidates, seed=3, max_batch=1)
    assert [c.to_dict() for c in together] == [c.to_dict() for c in alone]
    assert all(c.trials > 0 for c in together)
    # Every probe predicted as the candidate's class: nobody to paste onto.
    only = transplant(model, images, torch.ones_like(predictions), [c for c in candidates if c.class_index == 1])
    assert all(c.trials == 0 and math.isnan(c.flip_rate) for c in only)


def test_deterministic_under_a_seed_and_plain_data_for_reports() -> None:
    images, objects, _ = scenes(count=16)
    images, _ = with_stickers(images)
    model = Sticker()
    maps, predictions = explained(model, images)
    first = discover(model, images, maps, predictions, objects, seed=5, trials=2)
    second = discover(model, images, maps, predictions, objects, seed=5, trials=2)
    assert first.to_dict() == second.to_dict()
    data = json.loads(json.dumps(first.to_dict()))  # JSON-able, NaN as null
    assert data["settings"]["trials"] == 2 and data["settings"]["seed"] == 5
    assert data["candidates"][0]["box"] == list(CORNER) and "masks" not in data["candidates"][0]
    assert "class 1" in first.summary() and "off the object" in first.summary()


def test_the_model_and_the_random_streams_are_left_as_they_were_also_on_failure() -> None:
    images, _, _ = scenes(count=16)
    images, _ = with_stickers(images)
    model = Sticker().train()
    maps, predictions = explained(Sticker(), images)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    found = discover(model, images, maps, predictions)
    assert found.candidates[0].flip_rate == 1.0  # eval mode inside: dropout did not scramble the logits
    assert model.training and model.dropout.training and model.scale.requires_grad and model.scale.grad is None
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    with pytest.raises(ValueError, match="is not a class of this model"):
        discover(model, images, maps, predictions * 2)  # class 2 of a two-class model
    assert model.training and model.dropout.training and model.scale.requires_grad
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, i, p: discover(Sticker(), i, m, p, windows=3), "unknown discovery setting"),
        (lambda m, i, p: discover(Sticker(), i, m, p, top_fraction=0.0), "`top_fraction` must be"),
        (lambda m, i, p: discover(Sticker(), i, m, p, trials=0), "`trials` must be an integer >= 1"),
        (lambda m, i, p: discover(Sticker(), i, m, p, completion="yes"), "`completion` must be True, False or None"),
        (lambda m, i, p: propose_candidates(m[:, :8], p, i), "`images` must have shape"),
        (lambda m, i, p: propose_candidates(m, p.float(), i), "`predictions` must be integer class indices"),
        (lambda m, i, p: propose_candidates(m, p, i, torch.ones(4, 4)), "`object_masks` must have the shape"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    images, _, _ = scenes(count=4)
    with pytest.raises(ValueError, match=message):
        call(torch.rand(4, SIZE, SIZE), images, torch.zeros(4, dtype=torch.long))
