"""Tests for lightning_sas.scores.metrics: rank statistics and the shortcut score."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_sas.scores.metrics import flat_maps, rank_average, roi_enrichment, roi_mass, roi_share, spearman
from lightning_sas.validation import require_tensor, shape_of


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("with_ties", [False, True])
def test_rank_average_matches_scipy_rankdata(with_ties: bool) -> None:
    generator = _generator(0)
    values = torch.rand(5, 4, 37, generator=generator)
    if with_ties:
        # Few distinct levels -> many tie groups of different sizes per row.
        values = torch.randint(0, 6, (5, 4, 37), generator=generator).float()
    ranks = rank_average(values)
    expected = stats.rankdata(values.numpy(), axis=-1)
    assert ranks.shape == values.shape
    assert ranks.dtype == torch.float32
    np.testing.assert_array_equal(ranks.numpy(), expected)


def test_rank_average_handles_integer_bool_and_float64_input() -> None:
    integers = torch.tensor([[3, 1, 3, 2]])
    np.testing.assert_array_equal(rank_average(integers).numpy(), [[3.5, 1.0, 3.5, 2.0]])
    flags = torch.tensor([True, False, True])
    np.testing.assert_array_equal(rank_average(flags).numpy(), [2.5, 1.0, 2.5])
    doubles = torch.tensor([0.5, -1.0], dtype=torch.float64)
    assert rank_average(doubles).dtype == torch.float64


def test_rank_average_constant_row_gets_middle_rank() -> None:
    ranks = rank_average(torch.full((2, 5), 7.0))
    assert torch.equal(ranks, torch.full((2, 5), 3.0))


def test_rank_average_rejects_scalar_and_empty() -> None:
    with pytest.raises(ValueError, match="`values`"):
        rank_average(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"`values`.*\[3, 0\]"):
        rank_average(torch.zeros(3, 0))
    with pytest.raises(TypeError, match="`values`"):
        rank_average([1.0, 2.0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- spearman


def _scipy_spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = zip(a, b, strict=True)
    return np.array([stats.spearmanr(row_a.ravel(), row_b.ravel()).statistic for row_a, row_b in rows])


@pytest.mark.parametrize("with_ties", [False, True])
def test_spearman_matches_scipy(with_ties: bool) -> None:
    generator = _generator(1)
    a = torch.rand(6, 9, 11, generator=generator)
    # b is correlated with a, so the expected values spread over (-1, 1).
    b = a * torch.linspace(-1, 1, 6).view(6, 1, 1) + 0.3 * torch.rand(6, 9, 11, generator=generator)
    if with_ties:
        a = (a * 4).floor()
        b = (b * 3).floor()
    result = spearman(a, b)
    expected = _scipy_spearman_rows(a.numpy(), b.numpy())
    assert result.shape == (6,)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-5)
    # The ties really are there (otherwise the tie case tests nothing new).
    if with_ties:
        assert len(torch.unique(a[0])) < a[0].numel() // 10


def test_spearman_is_invariant_to_monotone_transforms_and_symmetric() -> None:
    generator = _generator(2)
    a = torch.randn(3, 50, generator=generator)
    b = torch.randn(3, 50, generator=generator)
    torch.testing.assert_close(spearman(a, b), spearman(torch.exp(a), b * 10 + 3))
    torch.testing.assert_close(spearman(a, b), spearman(b, a))
    torch.testing.assert_close(spearman(a, a), torch.ones(3))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(3))


def test_spearman_constant_row_is_nan() -> None:
    a = torch.stack([torch.arange(8.0), torch.zeros(8), torch.arange(8.0)])
    b = torch.stack([torch.arange(8.0), torch.arange(8.0), torch.ones(8)])
    result = spearman(a, b)
    assert result[0].item() == pytest.approx(1.0)
    assert math.isnan(result[1].item())
    assert math.isnan(result[2].item())


def test_spearman_float64_stays_float64() -> None:
    a = torch.rand(2, 10, dtype=torch.float64, generator=_generator(3))
    assert spearman(a, a.flip(-1)).dtype == torch.float64


def test_spearman_argument_errors_name_the_argument() -> None:
    with pytest.raises(
        ValueError,
        match=r"`b` must have the same shape as `a` \[2, 5\], got \[2, 6\]",
    ):
        spearman(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"`a`.*\[5\]"):
        spearman(torch.zeros(5), torch.zeros(5))
    with pytest.raises(TypeError, match="`b`"):
        spearman(torch.zeros(2, 5), np.zeros((2, 5)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- roi_share


def _square_roi(size: int, top: int, left: int, side: int) -> torch.Tensor:
    roi = torch.zeros(size, size, dtype=torch.bool)
    roi[top : top + side, left : left + side] = True
    return roi


def test_roi_share_perfect_map_is_one_and_inverted_map_is_zero() -> None:
    roi = _square_roi(8, 2, 3, 3)  # 9 of 64 pixels
    perfect = roi.float()
    inverted = 1.0 - perfect
    result = roi_share(torch.stack([perfect, inverted]), torch.stack([roi, roi]))
    assert result.tolist() == [1.0, 0.0]


def test_roi_share_graded_map_scores_fraction_of_top_pixels() -> None:
    # Strictly ordered map: the top-|R| pixels are exactly the 4 largest values.
    values = torch.arange(16.0).view(1, 4, 4)
    roi = torch.zeros(1, 4, 4, dtype=torch.bool)
    roi.view(-1)[[15, 14, 0, 1]] = True  # two of the four top pixels are in R
    assert roi_share(values, roi).item() == 0.5


def test_roi_share_constant_map_is_exactly_chance_level() -> None:
    roi = _square_roi(7, 1, 1, 3)  # 9 of 49 pixels
    maps = torch.full((1, 7, 7), 0.25)
    chance = torch.tensor(9 / 49, dtype=torch.float32)
    assert torch.equal(roi_share(maps, roi.unsqueeze(0)), chance.view(1))
    # Also for an all-zero map (a Grad-CAM map can be all zero).
    assert torch.equal(roi_share(torch.zeros(1, 7, 7), roi.unsqueeze(0)), chance.view(1))


def test_roi_share_tie_straddling_the_cut_counts_fractionally() -> None:
    # Values, flattened:  5  4  3  3  3  1  0  0      R = {0, 2, 5}, k = 3.
    # v = 3rd largest = 3. Strictly above v: {5, 4}, one of them (5) in R.
    # One slot left, shared by the three 3s, one of which is in R -> 1/3.
    # share = (1 + 1 * 1/3) / 3 = 4/9.
    maps = torch.tensor([5.0, 4.0, 3.0, 3.0, 3.0, 1.0, 0.0, 0.0]).view(1, 2, 4)
    roi = torch.zeros(8, dtype=torch.bool)
    roi[[0, 2, 5]] = True
    result = roi_share(maps, roi.view(1, 2, 4))
    assert result.item() == pytest.approx(4 / 9, abs=1e-7)


def test_roi_share_equals_mean_over_all_tie_orders() -> None:
    # Independent check of the fractional rule: break the ties in every possible
    # order, score each with a plain top-k, and average.
    maps = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.5, 0.1]])
    roi = torch.tensor([[True, True, False, True, False, False]])
    k = int(roi.sum())
    tied = [1, 2, 3, 4]
    scores = []
    for order in itertools.permutations(tied):
        broken = maps.clone()
        for offset, index in enumerate(order):
            broken[0, index] += 1e-3 * offset  # distinct, still between 0.1 and 0.9
        top = torch.topk(broken[0], k).indices
        scores.append(roi[0, top].float().mean().item())
    expected = sum(scores) / len(scores)
    share = roi_share(maps.view(1, 2, 3), roi.view(1, 2, 3)).item()
    assert share == pytest.approx(expected, abs=1e-6)


def test_roi_share_does_not_depend_on_pixel_order() -> None:
    generator = _generator(4)
    # Coarsely quantised map: large tie groups, so a tie-order-dependent top-k
    # would change its answer when pixels are permuted.
    maps = torch.randint(0, 4, (3, 10, 10), generator=generator).float()
    roi = torch.rand(3, 10, 10, generator=generator) < 0.3
    reference = roi_share(maps, roi)
    for _ in range(5):
        permutation = torch.randperm(100, generator=generator)
        shuffled_maps = maps.view(3, -1)[:, permutation].view(3, 10, 10)
        shuffled_roi = roi.view(3, -1)[:, permutation].view(3, 10, 10)
        shuffled = roi_share(shuffled_maps, shuffled_roi)
        torch.testing.assert_close(shuffled, reference, atol=1e-6, rtol=0)


def test_roi_share_batch_equals_per_image_calls() -> None:
    generator = _generator(5)
    maps = torch.rand(4, 12, 12, generator=generator)
    maps[1] = (maps[1] * 3).floor()  # one image with heavy ties
    rois = torch.stack(
        [
            _square_roi(12, 0, 0, 2),
            _square_roi(12, 3, 4, 5),
            _square_roi(12, 6, 1, 6),
            torch.ones(12, 12, dtype=torch.bool),  # whole image: always 1
        ]
    )
    batched = roi_share(maps, rois)
    singles = torch.cat([roi_share(maps[i : i + 1], rois[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=0, rtol=0)
    assert batched[3].item() == 1.0
    assert len(set(batched.tolist())) > 1  # the images really score differently


def test_roi_share_is_scale_free() -> None:
    generator = _generator(6)
    maps = torch.rand(2, 9, 9, generator=generator)
    roi = torch.rand(2, 9, 9, generator=generator) < 0.2
    torch.testing.assert_close(roi_share(maps, roi), roi_share(maps.pow(3) * 100, roi))


def test_roi_share_empty_roi_is_nan_and_others_unaffected() -> None:
    maps = torch.rand(2, 6, 6, generator=_generator(7))
    roi = torch.zeros(2, 6, 6, dtype=torch.bool)
    roi[1] = _square_roi(6, 0, 0, 2)
    result = roi_share(maps, roi)
    assert math.isnan(result[0].item())
    assert not math.isnan(result[1].item())


def test_roi_share_accepts_0_1_numeric_roi() -> None:
    maps = torch.rand(2, 5, 5, generator=_generator(8))
    roi = torch.rand(2, 5, 5, generator=_generator(9)) < 0.4
    expected = roi_share(maps, roi)
    torch.testing.assert_close(roi_share(maps, roi.float()), expected)
    torch.testing.assert_close(roi_share(maps, roi.to(torch.uint8)), expected)


def test_roi_share_float64_and_half_inputs() -> None:
    roi = _square_roi(6, 1, 1, 3).unsqueeze(0)
    maps = roi.double()
    assert roi_share(maps, roi).dtype == torch.float64
    assert roi_share(maps.half(), roi).dtype == torch.float32
    assert roi_share(maps.half(), roi).item() == 1.0


def test_roi_share_argument_errors_name_the_argument() -> None:
    maps = torch.rand(8, 64, 64)
    with pytest.raises(
        ValueError,
        match=(
            r"roi_share: `roi` must have the same shape as `maps` \[8, 64, 64\], "
            r"got \[8, 32, 32\]"
        ),
    ):
        roi_share(maps, torch.zeros(8, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`maps` must have shape \[B, H, W\], got \[64, 64\]"):
        roi_share(torch.rand(64, 64), torch.zeros(64, 64, dtype=torch.bool))
    with pytest.raises(
        TypeError,
        match=r"`maps` must have a floating-point dtype, got torch.int64",
    ):
        roi_share(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`roi` must be bool or contain only 0 and 1"):
        roi_share(torch.rand(1, 4, 4), torch.full((1, 4, 4), 0.5))
    with pytest.raises(TypeError, match="`roi` must be a torch.Tensor"):
        roi_share(torch.rand(1, 4, 4), np.zeros((1, 4, 4), dtype=bool))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- roi_mass


def test_roi_mass_hand_computed() -> None:
    maps = torch.tensor(
        [
            [[3.0, 1.0], [0.0, -5.0]],  # negative mass clamped: (3 + 0) / 4
            [[1.0, 1.0], [1.0, 1.0]],  # uniform: area share 2 / 4
            [[0.0, 0.0], [0.0, 2.0]],  # all mass outside R
        ]
    )
    roi = torch.tensor(
        [
            [[True, False], [False, True]],
            [[True, True], [False, False]],
            [[True, False], [False, False]],
        ]
    )
    np.testing.assert_allclose(roi_mass(maps, roi).numpy(), [0.75, 0.5, 0.0])


def test_roi_mass_nan_for_empty_roi_or_zero_map() -> None:
    positive = torch.rand(4, 4, generator=_generator(10)) + 0.1
    maps = torch.stack([positive, torch.zeros(4, 4), -torch.ones(4, 4)])
    roi = torch.ones(3, 4, 4, dtype=torch.bool)
    roi[0] = False
    result = roi_mass(maps, roi)
    assert all(math.isnan(value) for value in result.tolist())


def test_roi_mass_matches_direct_sum_on_random_batch() -> None:
    generator = _generator(11)
    maps = torch.rand(3, 10, 10, generator=generator)
    roi = torch.rand(3, 10, 10, generator=generator) < 0.25
    expected = (maps * roi).sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    torch.testing.assert_close(roi_mass(maps, roi), expected)
    torch.testing.assert_close(roi_mass(maps, roi.long()), expected)


def test_roi_mass_argument_errors_name_the_argument() -> None:
    with pytest.raises(
        ValueError,
        match=r"roi_mass: `roi` must have the same shape as `maps` \[2, 4, 4\], got \[2, 4\]",
    ):
        roi_mass(torch.rand(2, 4, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="roi_mass: `maps` must be a torch.Tensor"):
        not_a_tensor = np.zeros((1, 2, 2))
        roi_mass(not_a_tensor, torch.zeros(1, 2, 2, dtype=torch.bool))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared checks


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: rank_average([1.0]), "rank_average: `values` must be a torch.Tensor, got list"),
        (lambda: spearman((1.0,), torch.zeros(1, 2)), "spearman: `a` must be a torch.Tensor, got tuple"),
        (lambda: roi_share(torch.rand(1, 2, 2), None), "roi_share: `roi` must be a torch.Tensor, got NoneType"),
    ],
)
def test_type_errors_name_function_argument_and_given_type(call, expected: str) -> None:
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value) == expected


def test_shape_of_and_require_tensor() -> None:
    tensor = torch.zeros(2, 3)
    assert shape_of(tensor) == [2, 3] and isinstance(shape_of(tensor), list)
    assert require_tensor("f", "x", tensor) is tensor
    with pytest.raises(TypeError, match=r"^f: `x` must be a torch.Tensor, got ndarray$"):
        require_tensor("f", "x", np.zeros(2))


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_cuda_deterministically_and_match_cpu() -> None:
    generator = _generator(12)
    maps = (torch.rand(3, 16, 16, generator=generator) * 5).floor()
    roi = torch.rand(3, 16, 16, generator=generator) < 0.3
    other = torch.rand(3, 16, 16, generator=generator)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # Trainer(deterministic=True) must work
    try:
        cuda_results = [
            rank_average(maps.cuda()),
            spearman(maps.cuda(), other.cuda()),
            roi_share(maps.cuda(), roi.cuda()),
            roi_mass(maps.cuda(), roi.cuda()),
        ]
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    cpu_results = [
        rank_average(maps),
        spearman(maps, other),
        roi_share(maps, roi),
        roi_mass(maps, roi),
    ]
    for on_cuda, on_cpu in zip(cuda_results, cpu_results, strict=True):
        assert on_cuda.is_cuda
        torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- roi_enrichment, flat_maps


def test_roi_enrichment_is_pooled_excess_over_chance_normalised_to_the_maximum() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 16, 16, generator=generator)
    roi = torch.zeros(5, 16, 16, dtype=torch.bool)
    for index, side in enumerate([2, 3, 5, 8, 12]):
        roi[index, :side, :side] = True
    share = roi_share(maps, roi)
    pixels = roi.flatten(1).sum(dim=1)
    # The definition, probe by probe in plain Python.
    hits = sum(float(s) * int(n) for s, n in zip(share, pixels, strict=True))
    chance = sum(int(n) ** 2 / 256 for n in pixels)
    expected = (hits - chance) / (sum(int(n) for n in pixels) - chance)
    assert float(roi_enrichment(share, pixels, 256)) == pytest.approx(expected, rel=1e-5)
    # A map exactly on the ROI is 1 at every ROI size; a map that avoids it is below 0.
    assert float(roi_enrichment(roi_share(roi.float(), roi), pixels, 256)) == pytest.approx(1.0)
    assert float(roi_enrichment(roi_share((~roi).float(), roi), pixels, 256)) < 0


def test_roi_enrichment_leaves_out_nan_and_empty_rois_and_says_nan_when_nothing_is_left() -> None:
    share = torch.tensor([1.0, math.nan, 0.3])
    pixels = torch.tensor([10, 10, 0])
    assert float(roi_enrichment(share, pixels, 100)) == pytest.approx(1.0)
    assert math.isnan(float(roi_enrichment(torch.tensor([math.nan]), torch.tensor([10]), 100)))
    assert math.isnan(float(roi_enrichment(torch.tensor([1.0]), torch.tensor([100]), 100)))  # the whole image


def test_flat_maps_are_constant_finite_maps() -> None:
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.5), torch.eye(4), torch.full((4, 4), math.nan)])
    assert flat_maps(maps).tolist() == [True, True, False, False]
    nearly = torch.zeros(1, 4, 4)
    nearly[0, 0, 0] = 1e-3
    assert flat_maps(nearly).tolist() == [False]
