"""SpRAy's strategies: one class's maps clustered by their spatial pattern."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from lightning_sas.trust.discovery.strategies import cluster_strategies

SIZE = 16


def blob_maps(centres: list[tuple[int, int]], seed: int = 0) -> torch.Tensor:
    """One map per centre: a smooth blob there (moved by up to a pixel each way) over faint noise."""
    generator = torch.Generator().manual_seed(seed)
    grid_y, grid_x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    maps = 0.05 * torch.rand(len(centres), SIZE, SIZE, generator=generator)
    for index, (y, x) in enumerate(centres):
        dy, dx = (2 * torch.rand(2, generator=generator) - 1).tolist()
        maps[index] += torch.exp(-((grid_y - y - dy) ** 2 + (grid_x - x - dx) ** 2) / (2 * 1.5**2))
    return maps


def test_two_spatially_distinct_strategies_are_two_clusters() -> None:
    # 15 maps on the lesion in the middle, 9 on a ruler at the left edge, interleaved.
    left = [index % 8 in (1, 4, 6) for index in range(24)]
    centres = [(8, 3) if is_left else (8, 11) for is_left in left]
    found = cluster_strategies(blob_maps(centres), torch.zeros(24, dtype=torch.long))[0]
    assert found.clusters == 2
    truth = torch.tensor(left)
    labels = found.labels
    assert torch.equal(labels == labels[truth][0], truth)  # the split is the truth
    assert int((labels == 0).sum()) == 15  # cluster 0 is the larger one
    small = int(labels[truth][0])
    assert all(left[position] for position in found.representatives[small])
    assert found.mean_maps[small][:, :5].sum() > found.mean_maps[small][:, 5:].sum()  # its mean map is on the left
    assert found.eigengap > 0.2


def test_one_strategy_is_one_cluster_with_a_small_eigengap() -> None:
    for count, seed in itertools.product((10, 24, 40), (0, 1)):  # one blob, moved by up to a pixel
        one = cluster_strategies(blob_maps([(8, 8)] * count, seed=seed), torch.zeros(count, dtype=torch.long))[0]
        assert one.clusters == 1 and one.labels.tolist() == [0] * count
        assert one.eigengap == 0.0


def test_each_predicted_class_is_clustered_on_its_own_with_probe_positions() -> None:
    # Class 0 (even probes) always looks left; class 1 (odd probes) left on 6 probes, right on 6.
    centres = [(8, 3) if index % 2 == 0 or index % 4 == 1 else (8, 12) for index in range(24)]
    predictions = torch.arange(24) % 2
    found = cluster_strategies(blob_maps(centres), predictions)
    assert sorted(found) == [0, 1]
    assert found[1].positions == list(range(1, 24, 2))
    assert found[0].clusters == 1 and found[1].clusters == 2
    right = torch.tensor([centres[position][1] == 12 for position in found[1].positions])
    assert torch.equal(found[1].labels == found[1].labels[right][0], right)


def test_tiny_classes_are_one_cluster() -> None:
    found = cluster_strategies(blob_maps([(8, 3), (8, 12), (2, 2)]), torch.tensor([3, 3, 3]), max_clusters=4)
    assert found[3].clusters == 1 and math.isnan(found[3].eigengap) and found[3].eigenvalues == []
    assert found[3].representatives == [[0, 1, 2]] or sorted(found[3].representatives[0]) == [0, 1, 2]


def test_deterministic_under_a_seed_and_the_global_streams_are_untouched() -> None:
    maps = blob_maps([(8, 3), (8, 12)] * 12)
    predictions = torch.zeros(24, dtype=torch.long)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = cluster_strategies(maps, predictions, seed=3)[0]
    second = cluster_strategies(maps, predictions, seed=3)[0]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert first.to_dict() == second.to_dict() and first.clusters == 2
    json.dumps(first.to_dict())  # plain data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predictions": torch.zeros(3, dtype=torch.long)}, "`predictions` must be integer class indices"),
        ({"predictions": torch.zeros(4)}, "`predictions` must be integer class indices"),
        ({"max_clusters": 0}, "`max_clusters` must be an integer >= 1"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    arguments = {"maps": torch.rand(4, 8, 8), "predictions": torch.zeros(4, dtype=torch.long), **kwargs}
    with pytest.raises(ValueError, match=message):
        cluster_strategies(**arguments)
