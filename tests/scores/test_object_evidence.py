"""Evidence off the object: the rank share of the top-|object| pixels outside it, and its pooling."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_sas.scores.metrics import roi_enrichment, roi_mass, roi_share
from lightning_sas.scores.object_evidence import (
    dilate,
    object_enrichment,
    outside_enrichment,
    outside_mass,
    outside_share,
)

SIZE = 10


def lesion_masks(count: int = 1) -> torch.Tensor:
    """A 4x5 object (20 of 100 pixels) in the middle of each image."""
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    masks[:, 3:7, 2:7] = True
    return masks


def ruler_mask() -> torch.Tensor:
    """A 5-pixel strip along the top edge, off the object."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[0, 2:7] = True
    return mask


def test_a_map_on_the_object_puts_nothing_outside_and_a_hotspot_beside_it_does() -> None:
    lesion = lesion_masks(2)
    maps = torch.ones(2, SIZE, SIZE)
    maps[0][lesion[0]] = 2.0  # the object first, the rest tied below it
    maps[1][lesion[1]] = 2.0
    maps[1][ruler_mask()] = 3.0  # a ruler above even the object
    share = outside_share(maps, lesion)
    assert share[0] == 0.0
    assert share[1] == pytest.approx(5 / 20)  # the ruler's 5 pixels displace 5 of the object's 20


def test_the_top_object_pixels_see_a_hotspot_that_the_top_outside_pixels_miss() -> None:
    # Why |O| and not |outside| pixels (module docstring): ranking a ruler first and the object
    # second puts as many of the top-80 pixels outside as ranking the object first does.
    lesion = lesion_masks(2)
    maps = torch.ones(2, SIZE, SIZE)
    maps[:, 3:7, 2:7] = 2.0
    maps[1][ruler_mask()] = 3.0
    blind = roi_share(maps, ~lesion)
    assert blind[0] == blind[1]
    assert outside_share(maps, lesion)[1] > outside_share(maps, lesion)[0]


def test_a_constant_map_scores_the_outside_area_share_and_degenerate_objects_give_nan() -> None:
    masks = torch.cat([lesion_masks(1), torch.zeros(1, SIZE, SIZE, dtype=torch.bool), torch.ones(1, SIZE, SIZE)])
    share = outside_share(torch.full((3, SIZE, SIZE), 0.5), masks.bool())
    assert share[0] == pytest.approx(0.8)  # chance: 80 of 100 pixels are outside
    assert math.isnan(share[1]) and math.isnan(share[2])  # no object / no outside


def test_soft_masks_read_above_one_half_and_non_finite_maps_give_nan() -> None:
    lesion = lesion_masks(2)
    soft = lesion.float() * 0.9 + 0.05  # 0.95 on the object, 0.05 off it
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(outside_share(maps, soft), outside_share(maps, lesion))
    maps[1, 0, 0] = float("nan")
    assert math.isnan(outside_share(maps, lesion)[1]) and not math.isnan(outside_share(maps, lesion)[0])


def test_a_margin_keeps_the_objects_own_halo_from_counting_as_outside() -> None:
    lesion = lesion_masks()
    grown = dilate(lesion, 1)  # the object and a one-pixel halo: 6x7 = 42 pixels, 22 of them outside
    maps = grown.float()  # a coarse map spilling over the border, tied with the object
    assert outside_share(maps, lesion)[0] == pytest.approx(22 / 42)  # ties count fractionally
    maps = torch.where(grown & ~lesion, 3.0, lesion.float() * 2)  # the halo even ranks first
    assert outside_share(maps, lesion)[0] == 1.0
    assert outside_share(maps, lesion, margin=1)[0] == 0.0


def test_batched_equals_one_probe_at_a_time() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, SIZE, SIZE, generator=generator)
    masks = torch.rand(6, SIZE, SIZE, generator=generator) > 0.7
    together = outside_share(maps, masks, margin=1)
    alone = torch.cat([outside_share(maps[i : i + 1], masks[i : i + 1], margin=1) for i in range(6)])
    torch.testing.assert_close(together, alone, equal_nan=True)


def test_enrichment_is_one_off_the_object_and_strongly_negative_on_it() -> None:
    lesion = lesion_masks(4)
    off = torch.zeros(4, SIZE, SIZE)
    off[:, :3, :] = torch.rand(4, 3, SIZE, generator=torch.Generator().manual_seed(0)) + 1  # 30 px above
    assert outside_enrichment(off, lesion) == pytest.approx(1.0)
    on = lesion.float() + 0.01 * torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    # Every top pixel on the object: -sum(o k) / sum(k^2) = -(80 * 20) / 20^2 = -4.
    assert outside_enrichment(on, lesion) == pytest.approx(-4.0)
    assert object_enrichment(on, lesion) == pytest.approx(1.0)


def test_enrichment_of_maps_that_know_nothing_is_near_zero() -> None:
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(400, SIZE, SIZE, generator=generator)
    lesion = lesion_masks(400)
    assert abs(outside_enrichment(maps, lesion)) < 0.1
    assert abs(object_enrichment(maps, lesion)) < 0.05


def test_flat_maps_and_tiny_objects_are_left_out() -> None:
    lesion = lesion_masks(2)
    maps = torch.zeros(2, SIZE, SIZE)
    maps[1][ruler_mask()] = 1.0
    alone = outside_enrichment(maps[1:], lesion[1:])
    assert outside_enrichment(maps, lesion) == pytest.approx(alone)  # the flat map counts for nothing
    assert math.isnan(outside_enrichment(maps[:1], lesion[:1]))
    assert math.isnan(outside_enrichment(maps, lesion, min_pixels=21))  # 20-pixel objects are too small


def test_object_enrichment_and_outside_mass_reuse_the_roi_scores() -> None:
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(5, SIZE, SIZE, generator=generator)
    lesion = lesion_masks(5)
    expected = roi_enrichment(roi_share(maps, lesion), lesion.flatten(1).sum(dim=1), SIZE * SIZE)
    assert object_enrichment(maps, lesion) == pytest.approx(float(expected))
    torch.testing.assert_close(outside_mass(maps, lesion), roi_mass(maps, ~lesion))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: outside_share(torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool)), "`object_masks` must"),
        (lambda: outside_share(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool)), "`maps` must be a float"),
        (lambda: outside_share(torch.rand(1, 4, 4), torch.ones(1, 4, 4), margin=-1), "`margin` must be"),
        (lambda: outside_enrichment(torch.rand(1, 4, 4), torch.ones(1, 4, 4), min_pixels=0), "`min_pixels`"),
        (lambda: dilate(torch.ones(4, 4), 1), "`masks` must have shape"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
