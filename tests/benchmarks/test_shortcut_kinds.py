"""The discovery study's shortcut kinds: where each artifact is drawn, what its mask says, how often."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # `benchmarks` lives next to `tests`, outside the package
    sys.path.insert(0, str(REPOSITORY))

from benchmarks.shortcut_kinds import KINDS, LOCAL_KINDS, render

COUNT, SIZE = 64, 32


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_draws_its_artifact_where_its_mask_says_at_the_asked_rates(kind: str) -> None:
    clean, labels, lesions, _ = render(kind, COUNT, SIZE, 0.0, 0.0, seed=5)
    images, same_labels, same_lesions, artifacts = render(kind, COUNT, SIZE, 1.0, 0.0, seed=5)
    assert torch.equal(labels, same_labels) and torch.equal(lesions, same_lesions)  # lesions depend on the seed only
    assert images.shape == (COUNT, 3, SIZE, SIZE) and float(images.min()) >= 0 and float(images.max()) <= 1
    has = artifacts.flatten(1).amax(dim=1) > 0
    assert torch.equal(has, labels == 1)  # malignant at rate 1, benign at rate 0
    changed = (images - clean).abs().amax(dim=1) > 1e-6
    if kind in LOCAL_KINDS:
        # Drawn only inside its mask (the demo's ruler renderer redraws the whole image: not checked
        # there), and off the lesion (the demo's rulers may graze it: under 1% of their pixels).
        on_lesion = ((artifacts > 0) & (lesions > 0)).sum() / (artifacts > 0).sum()
        if kind != "ruler":
            assert not bool((changed & (artifacts == 0)).any())
            assert float(on_lesion) == 0.0
        assert float(on_lesion) < 0.01
        area = artifacts[has].flatten(1).mean(dim=1)
        assert bool((area > 0.003).all()) and bool((area < 0.35).all())
    else:  # the colour cast: the whole image of the images that carry it, nothing else
        assert bool(changed[has].flatten(1).all(dim=1).all()) and not bool(changed[~has].any())
