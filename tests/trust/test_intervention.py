"""The intervention score: paste the artifact, count the predictions that move to its class."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_sas.trust.intervention import Artifacts, intervene


class CornerDetector(nn.Module):
    """Class 1 iff the top-left 4x4 corner is bright (mean > 0.5): a pure shortcut model."""

    def __init__(self, watch: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.watch = watch

    def forward(self, images: Tensor) -> Tensor:
        region = images[:, :, :4, :4] if self.watch else images[:, :, -4:, -4:]
        logit = self.scale * (region.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-logit, logit], dim=1)


def dark_images(count: int = 6) -> Tensor:
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3


def corner_artifact(**kwargs) -> Artifacts:
    patches = torch.ones(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :4, :4] = True  # a full-size example: pasted where it is
    return Artifacts(target_class=1, patches=patches, masks=masks, **kwargs)


def test_a_model_that_uses_the_artifact_flips_every_probe() -> None:
    result = intervene(CornerDetector(watch=True), dark_images(), corner_artifact(trials=3))
    assert result.eligible.all() and result.flipped.shape == (6, 3)
    assert result.flip_rate == 1.0 and result.mean_probability_change > 0.9


def test_a_model_that_ignores_the_artifact_flips_none() -> None:
    result = intervene(CornerDetector(watch=False), dark_images(), corner_artifact())
    assert result.flip_rate == 0.0 and abs(result.mean_probability_change) < 1e-6


def test_probes_already_in_the_artifacts_class_do_not_count() -> None:
    images = dark_images()
    images[:2, :, :4, :4] = 1.0  # already predicted as class 1
    result = intervene(CornerDetector(), images, corner_artifact())
    assert result.eligible.tolist() == [False, False, True, True, True, True]
    assert result.flip_rate == 1.0


def test_small_patches_land_at_seeded_positions_inside_the_image() -> None:
    patch = torch.ones(1, 3, 4, 4)
    artifacts = Artifacts(target_class=1, patches=patch, masks=torch.ones(1, 4, 4), trials=8, seed=3)
    first, second = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    trials = [artifacts.apply(torch.zeros(2, 3, 16, 16), first) for _ in range(8)]
    assert all(torch.equal(pasted, artifacts.apply(torch.zeros(2, 3, 16, 16), second)) for pasted in trials)
    assert all(pasted.flatten(1).sum(dim=1).tolist() == [48.0] * 2 for pasted in trials)  # the whole patch
    assert all(torch.equal(pasted[0], pasted[1]) for pasted in trials)  # one position per trial, for every probe
    assert len({tuple(torch.nonzero(pasted[0, 0])[0].tolist()) for pasted in trials}) > 1  # several positions


def noise_paste(images: Tensor, generator: torch.Generator) -> Tensor:
    """A custom paste drawing one value per pixel: the draws would follow the batch position."""
    return images + torch.rand(images.shape, generator=generator)


@pytest.mark.parametrize("kind", ["patches", "paste"])
def test_a_probes_pastes_do_not_depend_on_the_other_probes_measured_with_it(kind: str) -> None:
    # A 14x14 patch overlaps the watched corner by an amount that depends on its position.
    artifacts = (
        Artifacts(target_class=1, patches=torch.ones(2, 3, 14, 14), masks=torch.ones(2, 14, 14), trials=5, seed=1)
        if kind == "patches"
        else Artifacts(target_class=1, paste=noise_paste, trials=5, seed=1)
    )
    images, model = dark_images(), CornerDetector()
    together = intervene(model, images, artifacts)
    assert together.probability_change.std() > 0.01  # the positions / draws matter
    for shard in ([0, 2, 4], [1, 3, 5], [5]):  # e.g. the shards of DDP ranks
        alone = intervene(model, images[shard], artifacts)
        torch.testing.assert_close(alone.probability_change, together.probability_change[shard])
        assert torch.equal(alone.flipped, together.flipped[shard])
        assert torch.equal(alone.eligible, together.eligible[shard])


def test_no_side_effects_on_model_or_random_streams() -> None:
    model = CornerDetector().train()
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()

    def paste(images: Tensor, generator: torch.Generator) -> Tensor:
        torch.rand(1), np.random.rand(), random.random()  # a careless paste function
        return images + torch.rand(images.shape, generator=generator)

    intervene(model, dark_images(), Artifacts(target_class=1, paste=paste))
    assert model.training and model.scale.requires_grad and model.scale.grad is None
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist() and random.getstate() == python_state


def test_works_inside_inference_mode_with_a_binary_single_logit_model() -> None:
    class SingleLogit(CornerDetector):
        def forward(self, images: Tensor) -> Tensor:
            return super().forward(images)[:, 1]

    with torch.inference_mode():
        result = intervene(SingleLogit(), dark_images(), corner_artifact())
    assert result.flip_rate == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_class": -1, "paste": lambda images, generator: images}, "`target_class` must be a class index >= 0"),
        ({"target_class": 1}, "Give either `patches` \\(with `masks`\\) or `paste`"),
        (
            {"target_class": 1, "patches": torch.ones(1, 3, 4, 4), "masks": torch.ones(1, 5, 5)},
            "`masks` must have shape \\[N, h, w\\] = \\[1, 4, 4\\]",
        ),
        (
            {"target_class": 1, "patches": torch.ones(1, 3, 4, 4), "masks": torch.zeros(1, 4, 4)},
            "must mark at least one pixel",
        ),
        (
            {"target_class": 1, "paste": lambda images, generator: images, "trials": 0},
            "`trials` must be an integer >= 1, got 0",
        ),
    ],
)
def test_bad_artifacts_are_refused_with_clear_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Artifacts(**kwargs)


def test_a_paste_that_changes_the_shape_is_refused() -> None:
    artifacts = Artifacts(target_class=1, paste=lambda images, generator: images[..., :8])
    with pytest.raises(ValueError, match=r"`paste` must return images of the shape it is given, \[1, 3, 16, 16\]"):
        intervene(CornerDetector(), dark_images(), artifacts)


def test_artifact_class_outside_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`target_class`=5 is not a class of this model \(2 classes\)"):
        intervene(CornerDetector(), dark_images(), Artifacts(target_class=5, paste=lambda images, generator: images))
