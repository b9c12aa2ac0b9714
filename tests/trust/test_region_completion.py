"""Region completion: a map's top pixels on part of a thing grow to the whole thing, and no further."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_sas.trust.discovery import discover
from lightning_sas.trust.discovery.probe_regions import Region
from lightning_sas.trust.discovery.region_completion import MAX_AREA, MAX_GROWTH, complete_regions, fill

SIZE = 16
SQUARE = (slice(0, 6), slice(0, 6))  # 6x6 = 14% of the image


class WholeSquare(nn.Module):
    """Class 1 iff *every* pixel of the top-left 6x6 square is bright: part of it is not enough."""

    def forward(self, images: Tensor) -> Tensor:
        darkest = images[:, :, SQUARE[0], SQUARE[1]].mean(dim=1).flatten(1).amin(dim=1)
        logit = 20 * (darkest - 0.5)
        return torch.stack([-logit, logit], dim=1)


def square_scenes(count: int = 24, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dark noisy images, a grey 4x4 object near the bottom right, a white 6x6 square on every other
    one; maps of the square's class on its top two rows only (12 pixels, the top 5%).

    Returns:
        ``(images, maps, object masks, square masks)``.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.3
    objects = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    squares = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    maps = torch.zeros(count, SIZE, SIZE)
    for index in range(count):
        y, x = (10 + torch.randint(-1, 2, (2,), generator=generator)).tolist()
        objects[index, y : y + 4, x : x + 4] = True
        images[index, :, y : y + 4, x : x + 4] = 0.6 + 0.05 * torch.rand(3, 4, 4, generator=generator)
        if index % 2 == 0:
            squares[index][SQUARE] = True
            images[index][:, SQUARE[0], SQUARE[1]] = 1.0
            maps[index, :2, :6] = 1.0  # its top third, not the whole square
        else:
            maps[index] = objects[index].float()
    return images, maps, objects, squares


@pytest.mark.parametrize("with_masks", [False, True])
def test_a_region_on_part_of_a_thing_grows_to_the_whole_thing_and_flips(with_masks: bool) -> None:
    images, maps, objects, squares = square_scenes()
    model = WholeSquare()
    predictions = model(images).argmax(dim=1)
    assert torch.equal(predictions, squares.flatten(1).any(dim=1).long())
    masks = objects if with_masks else None

    def square_candidate(**settings: object):
        found = discover(model, images, maps, predictions, masks, **settings)
        return next(candidate for candidate in found.candidates if candidate.class_index == 1)

    # The map's top pixels alone: pasting a third of the square does not satisfy the model.
    part = square_candidate(completion=False)
    assert part.sources == list(range(0, 24, 2)) and part.area == pytest.approx(12 / 256)
    assert part.flip_rate == 0.0
    # Completed (by default with object masks): the region grows to the square, and the paste
    # flips every recipient; the control (a window off it) none.
    whole = square_candidate() if with_masks else square_candidate(completion=True)
    assert bool((whole.masks == squares[whole.sources]).all())
    assert whole.area == pytest.approx(36 / 256) and len(whole.places) == 1
    assert whole.flip_rate == 1.0 and whole.control_flip_rate == 0.0
    if with_masks:
        assert whole.outside_object == 1.0
    else:  # without object masks the default leaves regions as they are
        assert square_candidate().area == pytest.approx(12 / 256)


def test_completion_stops_at_the_area_limit_on_a_uniform_image() -> None:
    standard = torch.zeros(1, 3, SIZE, SIZE)  # uniform: every pixel looks like the region
    mass = torch.full((1, SIZE, SIZE), 1 / SIZE**2)
    seed = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    seed[7:9, 7:9] = True  # 4 pixels: completed at most to MAX_GROWTH x 4 = 16 (MAX_AREA: 64)
    region = Region(0, seed, 4 / SIZE**2)
    assert bool(fill(seed[None], torch.ones(1, SIZE, SIZE, dtype=torch.bool)).all())  # the fill has no edge
    # ... so the region has no thing of its own to complete within the limits: it stays as it was.
    (completed,) = complete_regions([[region]], standard, mass, None)
    assert len(completed) == 1 and torch.equal(completed[0].mask, seed)

    # A bright thing of exactly the limit around the seed is completed to its edge; one pixel
    # more, and it is past the limit.
    standard[0, :, 6:10, 6:10] = 3.0
    completed, nothing = complete_regions([[region], []], standard.repeat(2, 1, 1, 1), mass.repeat(2, 1, 1), None)
    assert nothing == [] and len(completed) == 1 and MAX_GROWTH * 4 == 16
    assert completed[0].mask.sum() == 16 and bool(completed[0].mask[6:10, 6:10].all())
    assert completed[0].mass == pytest.approx(16 / SIZE**2)
    standard[0, :, 10, 6] = 3.0
    (completed,) = complete_regions([[region]], standard, mass, None)
    assert torch.equal(completed[0].mask, seed)
    standard[0, :, 10, 6] = 0.0

    # Never into blocked pixels (the dilated object).
    blocked = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    blocked[0, :, 9:] = True
    (completed,) = complete_regions([[region]], standard, mass, blocked)
    assert completed[0].mask.sum() == 12 and not bool((completed[0].mask & blocked[0]).any())
    # Two regions of one probe that fill one thing become one region.
    other = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    other[8:10, 8:10] = True
    (completed,) = complete_regions([[region, Region(0, other, 4 / SIZE**2)]], standard, mass, None)
    assert len(completed) == 1 and completed[0].mask.sum() == 16


def test_the_area_limit_is_a_share_of_the_image_for_large_regions() -> None:
    standard = torch.zeros(1, 3, SIZE, SIZE)
    standard[0, :, 2:12, 2:9] = 3.0  # a 10x7 thing: 70 pixels, over MAX_AREA of the image (64)
    seed = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    seed[4:10, 3:8] = True  # 30 pixels: MAX_GROWTH alone would allow 120
    mass = torch.full((1, SIZE, SIZE), 1 / SIZE**2)
    (completed,) = complete_regions([[Region(0, seed, 30 / SIZE**2)]], standard, mass, None)
    assert MAX_AREA * SIZE * SIZE == 64 and torch.equal(completed[0].mask, seed)
    standard[0, :, 11, 2:9] = 0.0  # 63 pixels: within the limit
    (completed,) = complete_regions([[Region(0, seed, 30 / SIZE**2)]], standard, mass, None)
    assert completed[0].mask.sum() == 63
