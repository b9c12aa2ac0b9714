"""Tests for the procedural ruler-bias demo data (examples/ruler_bias/data.py)."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

_DATA_PATH = Path(__file__).resolve().parents[2] / "examples" / "ruler_bias" / "data.py"


def _load_data_module() -> ModuleType:
    # examples/ is not a package; load the file under a private name.
    name = "_ruler_bias_data_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _DATA_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


data = _load_data_module()


def _luminance(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=1)


def _ruler_rates(labels: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Fraction of (benign, malignant) images that show a ruler."""
    has_ruler = masks.flatten(1).any(dim=1)
    return tuple(has_ruler[labels == label].float().mean().item() for label in (0, 1))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tests run many small ops; on shared, busy cores, intra-op threads wait on each
    other (measured 8x slower with two threads), so use one and restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def default_batch():
    """2,000 images with the default settings, with lesion masks (shared to save time)."""
    return data._generate_full(2000, seed=7)


# --------------------------------------------------------------------------- basics


def test_shapes_dtypes_ranges_and_balance():
    images, labels, masks = data.generate(11, image_size=40, seed=1)
    assert images.shape == (11, 3, 40, 40) and images.dtype == torch.float32
    assert labels.shape == (11,) and labels.dtype == torch.int64
    assert masks.shape == (11, 40, 40) and masks.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert torch.isfinite(images).all()
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # n // 2 benign, the rest malignant.
    assert (labels == 0).sum().item() == 5 and (labels == 1).sum().item() == 6
    assert data.CLASS_NAMES == ("benign", "malignant")


def test_labels_are_shuffled(default_batch):
    labels = default_batch.labels
    assert (labels == 0).sum().item() == 1000
    # Not sorted: both classes show up in the first and in the last hundred.
    assert 20 < labels[:100].sum().item() < 80 and 20 < labels[-100:].sum().item() < 80


def test_same_seed_is_bit_identical_and_seeds_differ():
    torch.manual_seed(1)
    np.random.seed(1)
    first = data.generate(24, seed=3)
    # Whatever the global RNGs hold, the output only depends on `seed`.
    torch.manual_seed(2)
    np.random.seed(2)
    second = data.generate(24, seed=3)
    other = data.generate(24, seed=4)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[1], other[1]) or not torch.equal(first[2], other[2])


def test_global_rng_states_are_untouched():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    data.generate(8, seed=0)
    data.make_splits(n_train=4, n_val=4, n_counterfactual=4, seed=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert random.getstate() == python_state


def test_thread_setting_is_restored():
    # Generation runs single-threaded internally; the caller's setting must come back.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data.generate(4, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- ruler


def test_masks_are_exactly_the_ruler_pixels():
    images, labels, masks = data.generate(300, seed=11)
    # Same seed without rulers: the random stream does not depend on the ruler rates, so
    # this is the same scene with the rulers left out.
    clean_images, clean_labels, clean_masks = data.generate(300, seed=11, p_ruler_malignant=0.0, p_ruler_benign=0.0)
    assert torch.equal(labels, clean_labels)
    assert clean_masks.sum() == 0
    ruler = masks.bool().unsqueeze(1).expand_as(images)
    # Outside the mask nothing changed, bit for bit ...
    assert torch.equal(images[~ruler], clean_images[~ruler])
    # ... and inside it (nearly) every pixel changed.
    changed = (images != clean_images).any(dim=1)
    assert changed[masks.bool()].float().mean() > 0.99
    # Images without a ruler are exactly the ruler-free rendering.
    no_ruler = masks.flatten(1).sum(dim=1) == 0
    assert no_ruler.any()
    assert torch.equal(images[no_ruler], clean_images[no_ruler])


def test_ruler_looks_like_a_ruler(default_batch):
    images, masks = default_batch.images, default_batch.ruler_masks
    lesions = default_batch.lesion_masks
    has_ruler = masks.flatten(1).any(dim=1)
    luminance = _luminance(images)[has_ruler]
    ruler = masks[has_ruler].bool()
    skin = ~ruler & (lesions[has_ruler] == 0)
    # Per image, luminance where the ruler is / in bare skin (NaN elsewhere).
    ruler_luminance = torch.where(ruler, luminance, torch.nan).flatten(1)
    skin_luminance = torch.where(skin, luminance, torch.nan).flatten(1)
    # A light strip: most of it brighter than the skin around it ...
    ruler_median = ruler_luminance.nanmedian(dim=1).values
    assert (ruler_median > skin_luminance.nanmedian(dim=1).values).all()
    # ... with dark tick marks on it (at least two dark pixels per ruler).
    assert ((ruler_luminance < 0.4).sum(dim=1) >= 2).all()
    # Without a ruler, no mask at all.
    assert masks[~has_ruler].sum() == 0


def test_ruler_lies_along_an_edge_and_spares_the_lesion(default_batch):
    masks, lesions = default_batch.ruler_masks, default_batch.lesion_masks
    size = masks.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    to_edge = torch.minimum(
        torch.minimum(coords.view(-1, 1), size - coords.view(-1, 1)),
        torch.minimum(coords.view(1, -1), size - coords.view(1, -1)),
    )
    assert to_edge[masks.sum(dim=0) > 0].max() <= 0.3 * size
    has_ruler = masks.flatten(1).any(dim=1)
    covered = (masks * lesions).flatten(1).sum(dim=1) / lesions.flatten(1).sum(dim=1)
    assert covered[has_ruler].max() <= 0.05
    assert covered[has_ruler].mean() <= 0.01
    # A ruler is a visible object, not a sliver.
    area = masks.flatten(1).mean(dim=1)[has_ruler]
    assert area.min() >= 0.01 and area.max() <= 0.2


def test_ruler_rates_per_class(default_batch):
    benign_rate, malignant_rate = _ruler_rates(default_batch.labels, default_batch.ruler_masks)
    assert abs(malignant_rate - 0.9) <= 0.02
    assert abs(benign_rate - 0.1) <= 0.02
    _, labels, masks = data.generate(400, seed=2, p_ruler_malignant=0.3, p_ruler_benign=0.6)
    benign_rate, malignant_rate = _ruler_rates(labels, masks)
    assert abs(malignant_rate - 0.3) <= 0.02 and abs(benign_rate - 0.6) <= 0.02


def test_splits_swap_and_clean_rates():
    splits = data.make_splits(n_train=200, n_val=200, n_counterfactual=200, seed=5)
    assert set(splits) == {"train", "val", "counterfactual"}
    for name, (benign_rate, malignant_rate) in {
        "train": (0.1, 0.9),
        "val": (0.1, 0.9),
        "counterfactual": (0.9, 0.1),
    }.items():
        split = splits[name]
        rates = _ruler_rates(split.labels, split.ruler_masks)
        assert rates == pytest.approx((benign_rate, malignant_rate), abs=0.02), name
    # Every split has its own seed.
    assert not torch.equal(splits["train"].images, splits["val"].images)

    clean = data.make_splits(
        n_train=200,
        n_val=200,
        n_counterfactual=200,
        p_ruler_malignant=0.8,
        p_ruler_benign=0.2,
        clean=True,
        seed=5,
    )
    for name, split in clean.items():
        rates = _ruler_rates(split.labels, split.ruler_masks)
        assert rates == pytest.approx((0.5, 0.5), abs=0.02), name


def test_dataset_items_are_normalised(default_batch):
    dataset = data.RulerBiasDataset(default_batch.images, default_batch.labels, default_batch.ruler_masks)
    assert len(dataset) == 2000
    image, label, roi = dataset[3]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.ndim == 0
    assert roi.shape == (64, 64) and torch.equal(roi, default_batch.ruler_masks[3])
    mean = torch.tensor(data.MEAN).view(3, 1, 1)
    std = torch.tensor(data.STD).view(3, 1, 1)
    assert torch.allclose(image * std + mean, default_batch.images[3], atol=1e-6)
    # MEAN / STD are the data's statistics: normalised data is ~zero mean, unit variance.
    normalised = dataset.normalised_images()
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (normalised.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    assert torch.equal(dataset.has_ruler, default_batch.ruler_masks.flatten(1).any(dim=1))
    with pytest.raises(ValueError, match="labels"):
        data.RulerBiasDataset(default_batch.images[:4], default_batch.labels[:3], default_batch.ruler_masks[:4])


@pytest.mark.parametrize("image_size", [16, 32, 128])
def test_other_image_sizes(image_size):
    images, labels, masks = data.generate(6, image_size=image_size, p_ruler_malignant=1.0, p_ruler_benign=1.0, seed=9)
    assert images.shape == (6, 3, image_size, image_size)
    assert masks.shape == (6, image_size, image_size)
    luminance = _luminance(images)
    for index in range(6):
        ruler_pixels = luminance[index][masks[index].bool()]
        assert ruler_pixels.numel() >= 0.01 * image_size**2  # every image has its ruler
        assert (ruler_pixels < 0.4).any()  # with ticks


def test_geometry_scales_with_image_size():
    # The same seed at two sizes: the same scene, so relative areas agree.
    small = data._generate_full(64, image_size=32, seed=13)
    large = data._generate_full(64, image_size=128, seed=13)
    lesion_small = small.lesion_masks.flatten(1).mean(dim=1)
    lesion_large = large.lesion_masks.flatten(1).mean(dim=1)
    assert (lesion_small - lesion_large).abs().max() < 0.03
    ruler_small = small.ruler_masks.flatten(1).mean(dim=1)
    ruler_large = large.ruler_masks.flatten(1).mean(dim=1)
    assert torch.equal(ruler_small > 0, ruler_large > 0)
    # The 32-px ruler may be wider: its stripe has a floor of 3.5 pixels for legible ticks.
    assert (ruler_small - ruler_large).abs().max() < 0.05


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"n": 2.5}, "n"),
        ({"n": True}, "n"),
        ({"n": 4, "image_size": 15}, "image_size"),
        ({"n": 4, "p_ruler_malignant": 1.5}, "p_ruler_malignant"),
        ({"n": 4, "p_ruler_benign": -0.1}, "p_ruler_benign"),
        ({"n": 4, "p_ruler_benign": math.nan}, "p_ruler_benign"),
        ({"n": 4, "seed": -1}, "seed"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, name):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=rf"\b{name}\b") as error:
        data.generate(n, **kwargs)
    bad_value = {"n": n, **kwargs}[name]
    assert repr(bad_value) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_val": -3}, "n_val"),
        ({"n_counterfactual": 0}, "n_counterfactual"),
        ({"image_size": 8}, "image_size"),
        ({"p_ruler_malignant": 2.0}, "p_ruler_malignant"),
        ({"p_ruler_benign": -1.0, "clean": True}, "p_ruler_benign"),
    ],
)
def test_make_splits_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b") as error:
        data.make_splits(**kwargs)
    assert repr(kwargs[name]) in str(error.value)


# --------------------------------------------------------------------------- learnability


def _lesion_features(images: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Five hand-made morphology features per image (colour spread, blueness, darkest
    spot, border roughness); no ruler information."""
    area = lesions.flatten(1).sum(dim=1).clamp_min(1.0)
    luminance = _luminance(images)
    mean_luminance = (luminance * lesions).flatten(1).sum(dim=1) / area
    spread = ((luminance - mean_luminance.view(-1, 1, 1)) ** 2 * lesions).flatten(1).sum(1)
    spread = (spread / area).sqrt() / mean_luminance
    blue_minus_red = (images[:, 2] - images[:, 0]) * lesions
    blueness = blue_minus_red.flatten(1).sum(dim=1) / area
    bluest = (blue_minus_red + (lesions - 1)).flatten(1).amax(dim=1)
    darkest = mean_luminance - (luminance + (1 - lesions)).flatten(1).amin(dim=1)
    # Border pixels: lesion pixels with a non-lesion 4-neighbour; perimeter^2 / area is
    # smallest for a disc and grows with irregularity.
    padded = F.pad(lesions, (1, 1, 1, 1))
    interior = (
        padded[:, 1:-1, 1:-1] * padded[:, :-2, 1:-1] * padded[:, 2:, 1:-1] * padded[:, 1:-1, :-2] * padded[:, 1:-1, 2:]
    )
    perimeter = (lesions - interior).flatten(1).sum(dim=1)
    roughness = perimeter**2 / area
    return torch.stack([spread, blueness, bluest, darkest, roughness], dim=1)


def test_morphology_is_learnable_but_not_trivial(default_batch):
    features = _lesion_features(default_batch.images, default_batch.lesion_masks)
    labels = default_batch.labels.float()
    train, test = slice(0, 1000), slice(1000, 2000)
    mean, std = features[train].mean(dim=0), features[train].std(dim=0)
    design = torch.cat([(features - mean) / std, torch.ones(len(features), 1)], dim=1).double()
    # Logistic regression by Newton's method (IRLS) with a small ridge: 6 parameters,
    # converges in a few steps, no optimiser state.
    x, y = design[train], labels[train].double()
    coefficients = torch.zeros(design.shape[1], dtype=torch.float64)
    ridge = 1e-3 * torch.eye(design.shape[1], dtype=torch.float64)
    for _ in range(25):
        probabilities = torch.sigmoid(x @ coefficients)
        gradient = x.T @ (probabilities - y) + ridge @ coefficients
        hessian = x.T @ (x * (probabilities * (1 - probabilities)).unsqueeze(1)) + ridge
        coefficients = coefficients - torch.linalg.solve(hessian, gradient)
    predictions = (design[test] @ coefficients) > 0
    accuracy = (predictions.double() == labels[test].double()).double().mean().item()
    # Measured ~0.88: the classes really differ in morphology, and they overlap.
    assert 0.75 <= accuracy <= 0.97
