"""Tests for lightning_sas.report.render: display conversion, overlays, figures, PNG output."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lightning_sas.report import render
from lightning_sas.report.render import (
    comparison_grid,
    method_grid,
    overlay,
    probe_panel,
    save_png,
    to_display,
    to_uint8,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- to_display


def test_to_display_inverts_normalisation() -> None:
    original = torch.rand(2, 3, 8, 8, generator=_generator(0))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    normalised = (original - mean) / std
    restored = to_display(normalised, mean=MEAN, std=STD)
    assert restored.shape == (2, 3, 8, 8)
    assert restored.dtype == torch.float32
    torch.testing.assert_close(restored, original, atol=1e-6, rtol=0)


def test_to_display_clips_out_of_range_values_after_denormalising() -> None:
    images = torch.tensor([-10.0, 0.0, 10.0]).view(1, 1, 1, 3)
    result = to_display(images, mean=[0.5], std=[0.25])
    assert result[0, 0, 0].tolist() == [0.0, 0.5, 1.0]


def test_to_display_one_mean_and_std_value_applies_to_every_rgb_channel() -> None:
    original = torch.rand(2, 3, 8, 8, generator=_generator(20))
    normalised = (original - 0.5) / 0.25
    restored = to_display(normalised, mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(restored, original, atol=1e-6, rtol=0)
    # Same result as spelling the value out once per channel.
    torch.testing.assert_close(restored, to_display(normalised, mean=[0.5] * 3, std=[0.25] * 3))
    # Only one of them given: the other is the identity (0 / 1).
    torch.testing.assert_close(to_display(original - 0.5, mean=(0.5,)), original, atol=1e-6, rtol=0)


def test_to_display_wrong_number_of_mean_values_names_mean() -> None:
    with pytest.raises(ValueError, match=r"`mean`.*3.*got 2: \[0.1, 0.2\]") as caught:
        to_display(torch.zeros(1, 3, 4, 4), mean=[0.1, 0.2])
    assert "`std`" not in str(caught.value)


def test_to_display_min_max_per_image_and_grey_to_rgb() -> None:
    images = torch.stack(
        [
            torch.linspace(-3, 5, 16).view(1, 4, 4),  # spans [-3, 5]
            torch.linspace(10, 12, 16).view(1, 4, 4),  # a different range
            torch.full((1, 4, 4), 7.0),  # constant: no range to stretch
        ]
    )
    result = to_display(images)
    assert result.shape == (3, 3, 4, 4)
    for index in range(2):
        assert result[index].min().item() == 0.0
        assert result[index].max().item() == 1.0
        # Grey repeated to three identical channels.
        assert torch.equal(result[index, 0], result[index, 1])
        assert torch.equal(result[index, 0], result[index, 2])
    assert torch.equal(result[2], torch.zeros(3, 4, 4))
    torch.testing.assert_close(result[0, 0], torch.linspace(0, 1, 16).view(4, 4))


def test_to_display_min_max_uses_all_channels_together() -> None:
    # Channel 0 spans [0, 2], channel 1 is constant 1: a per-channel stretch would
    # turn channel 1 black; a joint stretch keeps it at mid grey.
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    images[0, 1] = 1.0
    result = to_display(images)
    assert torch.equal(result[0, 1], torch.full((2, 2), 0.5))


def test_to_display_does_not_track_gradients() -> None:
    images = torch.rand(1, 3, 4, 4, requires_grad=True)
    assert not to_display(images).requires_grad


def test_to_display_argument_errors_name_the_argument() -> None:
    with pytest.raises(
        ValueError,
        match=r"to_display: `images` must have 1 or 3 channels.*got \[2, 4, 8, 8\]",
    ):
        to_display(torch.zeros(2, 4, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"`images` must have shape \[B, C, H, W\], got \[3, 8, 8\]",
    ):
        to_display(torch.zeros(3, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"to_display: `mean` must have 1 value.* or 3 .*3-channel images, got 2: \[0.5, 0.4\]",
    ):
        to_display(torch.zeros(1, 3, 4, 4), mean=[0.5, 0.4], std=[0.25])
    with pytest.raises(
        ValueError,
        match=r"to_display: `std` must have 1 value.*1-channel images, got 3: \[0.229, 0.224, 0.225\]",
    ):
        to_display(torch.zeros(1, 1, 4, 4), mean=[0.5], std=STD)
    with pytest.raises(ValueError, match=r"to_display: `std` values must be positive, got \[0.0\]"):
        to_display(torch.zeros(1, 3, 4, 4), std=[0.0])
    with pytest.raises(ValueError, match=r"to_display: `mean` values must be finite numbers"):
        to_display(torch.zeros(1, 3, 4, 4), mean=[float("nan")])
    with pytest.raises(TypeError, match="`images` must be a torch.Tensor"):
        to_display(np.zeros((1, 3, 4, 4)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- overlay


def test_overlay_alpha_zero_returns_the_image() -> None:
    display = torch.rand(2, 3, 5, 5, generator=_generator(1))
    maps = torch.rand(2, 5, 5, generator=_generator(2))
    torch.testing.assert_close(overlay(display, maps, alpha=0.0), display, atol=0, rtol=0)


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_overlay_alpha_one_returns_matplotlib_colours(cmap: str) -> None:
    # Include both ends and values right at / next to bin edges.
    values = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.1, 0.3333, 0.77, 0.99, 1 / 256, 255 / 256, 0.999999])
    maps = values.view(1, 1, -1)
    display = torch.rand(1, 3, 1, values.numel(), generator=_generator(3))
    colours = overlay(display, maps, cmap=cmap, alpha=1.0)[0, :, 0, :].T.numpy()
    expected = matplotlib.colormaps[cmap](values.numpy())[:, :3]
    np.testing.assert_allclose(colours, expected, atol=1 / 255)


def test_overlay_blends_linearly_and_clips_map_values() -> None:
    display = torch.rand(1, 3, 4, 4, generator=_generator(4))
    maps = torch.rand(1, 4, 4, generator=_generator(5))
    full = overlay(display, maps, alpha=1.0)
    torch.testing.assert_close(overlay(display, maps, alpha=0.3), 0.7 * display + 0.3 * full)
    # Out-of-range map values take the end colours.
    torch.testing.assert_close(overlay(display, maps * 0 - 5, alpha=1.0), overlay(display, maps * 0, alpha=1.0))
    torch.testing.assert_close(overlay(display, maps * 0 + 5, alpha=1.0), overlay(display, maps * 0 + 1, alpha=1.0))


def _grey(images: torch.Tensor) -> torch.Tensor:
    """What overlay shows for a map with no finite answer: washed-out luma, all channels equal."""
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    return (0.5 * luma + 0.25)[:, None].expand(-1, 3, -1, -1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_overlay_draws_no_heat_for_a_map_with_a_non_finite_value(bad: float) -> None:
    display = torch.rand(3, 3, 6, 6, generator=_generator(21))
    maps = torch.rand(3, 6, 6, generator=_generator(22))
    broken = maps.clone()
    broken[1, 2, 3] = bad  # one pixel is enough: the whole map is no answer
    result = overlay(display, broken, alpha=0.5)
    # The other rows are exactly what they would be without the broken map.
    torch.testing.assert_close(result[[0, 2]], overlay(display[[0, 2]], maps[[0, 2]], alpha=0.5))
    # The broken row: the image greyed, with no trace of the map's (finite) values.
    torch.testing.assert_close(result[1:2], _grey(display[1:2]))
    assert torch.equal(result[1, 0], result[1, 1]) and torch.equal(result[1, 1], result[1, 2])


def test_overlay_greys_an_all_nan_map_at_every_alpha() -> None:
    display = torch.rand(1, 3, 4, 4, generator=_generator(23))
    nan_maps = torch.full((1, 4, 4), float("nan"))
    expected = _grey(display)
    for alpha in (0.0, 0.5, 1.0):
        result = overlay(display, nan_maps, alpha=alpha)
        assert torch.isfinite(result).all()
        torch.testing.assert_close(result, expected)
    # Not a heatmap of zeros: that would be the colormap's bottom colour blended in.
    assert not torch.allclose(overlay(display, nan_maps), overlay(display, torch.zeros(1, 4, 4)))


def test_figures_accept_overlays_of_non_finite_maps() -> None:
    display = torch.rand(2, 3, 16, 16, generator=_generator(24))
    maps = torch.rand(2, 16, 16, generator=_generator(25))
    maps[0] = float("nan")
    overlays = overlay(display, maps)
    grid = method_grid(display, overlays, ["no answer", "fine"])
    panel = probe_panel(display[0], {"SaS": overlays[0]}, "probe 0")
    comparison = comparison_grid(display, {"SaS": overlays}, ["no answer", "fine"])
    for picture in (grid, panel, comparison):
        assert picture.dtype == np.uint8 and picture.shape[-1] == 3
    # The greyed panel is in the figure: its top-left pixel's grey value appears there.
    grey_value = round(float(_grey(display[:1])[0, 0, 0, 0]) * 255)
    grey = (panel[..., 0] == grey_value) & (panel[..., 1] == grey_value) & (panel[..., 2] == grey_value)
    assert grey.any()


def test_overlay_argument_errors_name_the_argument() -> None:
    display = torch.rand(2, 3, 8, 8)
    with pytest.raises(
        ValueError,
        match=(
            r"overlay: `maps` must match `display`'s batch and image size \[2, 8, 8\], "
            r"got \[2, 4, 4\]"
        ),
    ):
        overlay(display, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"`maps` must have shape \[B, H, W\], got \[2, 1, 8, 8\]"):
        overlay(display, torch.rand(2, 1, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"`display` must have shape \[B, 3, H, W\], got \[2, 1, 8, 8\]",
    ):
        overlay(torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="`alpha` must be in \\[0, 1\\], got 1.5"):
        overlay(display, torch.rand(2, 8, 8), alpha=1.5)
    with pytest.raises(
        ValueError,
        match="`cmap` must be the name of a matplotlib colormap, got 'no-such-map'",
    ):
        overlay(display, torch.rand(2, 8, 8), cmap="no-such-map")


# --------------------------------------------------------------------------- figures


def _grid_inputs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = _generator(seed)
    display = torch.rand(count, 3, 16, 16, generator=generator)
    maps = torch.rand(count, 16, 16, generator=generator)
    return display, overlay(display, maps)


def test_method_grid_is_uint8_rgb_of_stable_size() -> None:
    display, overlays = _grid_inputs(2, seed=6)
    first = method_grid(display, overlays, ["true: melanoma  pred: melanoma (0.93)", "b"], title="SaS")
    other_display, other_overlays = _grid_inputs(2, seed=7)
    second = method_grid(
        other_display,
        other_overlays,
        ["x", "true: nevus  pred: melanoma (0.51)"],
        title="SaS epoch 12",
    )
    assert first.dtype == np.uint8
    assert first.ndim == 3 and first.shape[-1] == 3
    assert first.shape == second.shape
    assert not np.array_equal(first, second)  # content did change


def test_method_grid_with_more_rows_is_taller_not_wider() -> None:
    small = method_grid(*_grid_inputs(1, seed=8), ["a"])
    large = method_grid(*_grid_inputs(3, seed=8), ["a", "b", "c"])
    assert large.shape[0] > small.shape[0]
    assert large.shape[1] == small.shape[1]


def test_method_grid_shows_the_pixels_unchanged() -> None:
    # A solid-colour image must appear as that colour somewhere in the figure.
    display = torch.zeros(1, 3, 16, 16)
    display[:, 0] = 1.0  # pure red, distinct from white background and black text
    picture = method_grid(display, display.clone(), ["label"])
    red = (picture[..., 0] == 255) & (picture[..., 1] == 0) & (picture[..., 2] == 0)
    assert red.mean() > 0.3


def test_method_grid_argument_errors_name_the_argument() -> None:
    display, overlays = _grid_inputs(2, seed=9)
    with pytest.raises(
        ValueError,
        match="`row_labels` must have one label per image \\(2\\), got 1",
    ):
        method_grid(display, overlays, ["only one"])
    with pytest.raises(
        ValueError,
        match=(
            r"`overlays` must have the same shape as `display` \[2, 3, 16, 16\], "
            r"got \[2, 3, 8, 8\]"
        ),
    ):
        method_grid(display, overlays[:, :, :8, :8], ["a", "b"])
    with pytest.raises(ValueError, match=r"method_grid: `display` must have shape \[B, 3, H, W\]"):
        method_grid(display[:, :1], overlays[:, :1], ["a", "b"])


def test_probe_panel_is_uint8_rgb_of_stable_size_and_widens_with_methods() -> None:
    display, overlays = _grid_inputs(3, seed=10)
    two_methods = probe_panel(display[0], {"SaS": overlays[0], "Grad-CAM": overlays[1]}, "probe 0")
    again = probe_panel(
        display[1],
        {"SaS": overlays[2], "Grad-CAM": overlays[0]},
        "probe 1  true: nevus  pred: nevus (0.80)",
    )
    one_method = probe_panel(display[0], {"SaS": overlays[0]}, "probe 0")
    assert two_methods.dtype == np.uint8 and two_methods.shape[-1] == 3
    assert two_methods.shape == again.shape
    assert not np.array_equal(two_methods, again)
    assert one_method.shape[1] < two_methods.shape[1]
    assert one_method.shape[0] == two_methods.shape[0]


def test_probe_panel_argument_errors_name_the_argument() -> None:
    display, overlays = _grid_inputs(1, seed=11)
    with pytest.raises(
        ValueError,
        match=(
            r"probe_panel: `overlays\['SaS'\]` must have the same shape as `display_one` "
            r"\[3, 16, 16\], got \[3, 8, 8\]"
        ),
    ):
        probe_panel(display[0], {"SaS": overlays[0, :, :8, :8]}, "t")
    with pytest.raises(
        ValueError,
        match=r"`display_one` must have shape \[3, H, W\], got \[1, 3, 16, 16\]",
    ):
        probe_panel(display, {"SaS": overlays}, "t")


def test_figures_are_freed_after_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[weakref.ReferenceType[Figure]] = []

    class TrackedFigure(Figure):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            created.append(weakref.ref(self))

    monkeypatch.setattr(render, "Figure", TrackedFigure)
    display, overlays = _grid_inputs(2, seed=15)
    method_grid(display, overlays, ["a", "b"])
    probe_panel(display[0], {"SaS": overlays[0]}, "t")
    gc.collect()
    assert len(created) == 2
    assert all(reference() is None for reference in created)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_display_and_overlay_stay_on_the_device_and_match_cpu() -> None:
    images = torch.randn(2, 3, 8, 8, generator=_generator(16))
    maps = torch.rand(2, 8, 8, generator=_generator(17))
    on_cpu = overlay(to_display(images, MEAN, STD), maps)
    on_gpu = overlay(to_display(images.cuda(), MEAN, STD), maps.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)
    gpu_picture = method_grid(on_gpu, on_gpu, ["a", "b"])
    assert gpu_picture.shape == method_grid(on_cpu, on_cpu, ["a", "b"]).shape


def test_comparison_grid_has_a_column_per_method_and_a_row_per_image() -> None:
    display, overlays = _grid_inputs(3, seed=26)
    one_method = comparison_grid(display, {"SaS": overlays}, ["a", "b", "c"], title="t")
    two_methods = comparison_grid(display, {"SaS": overlays, "Grad-CAM": overlays.flip(0)}, ["a", "b", "c"], title="t")
    fewer_rows = comparison_grid(display[:2], {"SaS": overlays[:2], "Grad-CAM": overlays[:2]}, ["a", "b"], title="t")
    longer_text = comparison_grid(
        display, {"SaS": overlays, "Grad-CAM": overlays}, ["a much longer label " * 2, "b", "c"], title="a longer title"
    )
    assert two_methods.dtype == np.uint8 and two_methods.shape[-1] == 3
    assert two_methods.shape[1] > one_method.shape[1] and two_methods.shape[0] == one_method.shape[0]
    assert fewer_rows.shape[0] < two_methods.shape[0] and fewer_rows.shape[1] == two_methods.shape[1]
    assert longer_text.shape == two_methods.shape  # size fixed by the shapes, not the text
    # With one method and no title it is the same picture as method_grid's plus column titles.
    assert (
        comparison_grid(display, {"SaS": overlays}, ["a", "b", "c"]).shape[1]
        == (method_grid(display, overlays, ["a", "b", "c"]).shape[1])
    )


def test_comparison_grid_shows_every_column() -> None:
    display = torch.zeros(1, 3, 16, 16)
    display[:, 0] = 1.0  # pure red image
    green = torch.zeros(1, 3, 16, 16)
    green[:, 1] = 1.0
    blue = torch.zeros(1, 3, 16, 16)
    blue[:, 2] = 1.0
    picture = comparison_grid(display, {"G": green, "B": blue}, ["label"])
    for channel in range(3):
        pure = (picture[..., channel] == 255) & (picture.sum(axis=-1) == 255)
        assert pure.mean() > 0.15, channel


def test_comparison_grid_argument_errors_name_the_argument() -> None:
    display, overlays = _grid_inputs(2, seed=27)
    with pytest.raises(ValueError, match="comparison_grid: `overlays` must map at least one method"):
        comparison_grid(display, {}, ["a", "b"])
    with pytest.raises(
        ValueError,
        match=(
            r"comparison_grid: `overlays\['SaS'\]` must have the same shape as `display` "
            r"\[2, 3, 16, 16\], got \[1, 3, 16, 16\]"
        ),
    ):
        comparison_grid(display, {"SaS": overlays[:1]}, ["a", "b"])
    with pytest.raises(ValueError, match=r"`row_labels` must have one label per image \(2\), got 3"):
        comparison_grid(display, {"SaS": overlays}, ["a", "b", "c"])
    with pytest.raises(TypeError, match=r"comparison_grid: `overlays\['SaS'\]` must be a torch.Tensor, got ndarray"):
        comparison_grid(display, {"SaS": overlays.numpy()}, ["a", "b"])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"`display` must have shape \[B, 3, H, W\] with B >= 1, got \[0, 3, 16, 16\]"):
        comparison_grid(display[:0], {"SaS": overlays[:0]}, [])


# --------------------------------------------------------------------------- legibility and honest pixels

EIGHT_METHODS = ["sas", "gradcam", "ig", "smoothgrad", "occlusion", "lime", "gradientshap", "saliency"]
# TensorBoard's images dashboard draws every image 350 px wide until it is clicked.
TENSORBOARD_WIDTH = 350


def _ink_bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of rows (start, stop) that hold any True pixel."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    stops = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _ink_clusters(columns: np.ndarray, gap: int) -> int:
    """How many groups of ink columns there are, columns closer than ``gap`` joined (letters into words)."""
    ink = np.flatnonzero(columns)
    return 0 if ink.size == 0 else 1 + int((np.diff(ink) > gap).sum())


def _heading_ink(names: list[str], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """A panel of 64-px probes titled by ``names``, and the pixels that its headings alone draw."""
    display, overlays = _grid_inputs(len(names), seed=40)
    display = torch.nn.functional.interpolate(display, size=(64, 64), mode="nearest")
    overlays = torch.nn.functional.interpolate(overlays, size=(64, 64), mode="nearest")
    titled = probe_panel(display[0], dict(zip(names, overlays, strict=True)), "val[3]", **kwargs)
    # Blank names of distinct lengths draw no ink: the difference is the method names' ink.
    blank = probe_panel(display[0], {" " * (i + 1): o for i, o in enumerate(overlays)}, "val[3]", **kwargs)
    assert titled.shape == blank.shape
    return titled, (titled != blank).any(axis=-1)


@pytest.mark.parametrize("names", [EIGHT_METHODS, EIGHT_METHODS[:2]], ids=["8 methods", "2 methods"])
def test_probe_panel_method_names_are_legible_at_tensorboard_width(names: list[str]) -> None:
    picture, ink = _heading_ink(names)
    bands = _ink_bands(ink)
    rows = -(-(len(names) + 1) // 3)  # tiles wrap three to a row
    assert len(bands) == rows
    shrink = TENSORBOARD_WIDTH / picture.shape[1]
    for start, stop in bands:
        # Lowercase names with ascenders: their ink is most of the font size; 9 px reads comfortably.
        assert (stop - start) * shrink >= 9, (stop - start, picture.shape)
        # Each method's name stays apart from its neighbours' (the image column has no heading ink).
        in_band = ink[start:stop].any(axis=0)
        assert _ink_clusters(in_band, gap=12) == min(3, len(names) + 1) - (1 if start == bands[0][0] else 0)


def test_comparison_grid_keeps_eight_method_names_apart() -> None:
    display, overlays = _grid_inputs(2, seed=41)
    columns = {name: overlays.roll(i, dims=0) for i, name in enumerate(EIGHT_METHODS)}
    titled = comparison_grid(display, columns, ["a", "b"])
    blank = comparison_grid(display, {" " * (i + 1): o for i, o in enumerate(columns.values())}, ["a", "b"])
    ink = (titled != blank).any(axis=-1)
    (band,) = _ink_bands(ink)  # one row of column titles, at the top
    assert band[0] < titled.shape[0] // 4
    assert _ink_clusters(ink[band[0] : band[1]].any(axis=0), gap=12) == 8
    assert band[1] - band[0] >= 11  # legible at the size it is shown (reports, docs)


def test_small_probes_are_enlarged_by_whole_pixels() -> None:
    display = torch.rand(1, 3, 16, 16, generator=_generator(42))
    picture = method_grid(display, display.clone(), ["label"])
    factor = 200 // 16  # the default tile: panel_inches * dpi = 200 px
    expected = to_uint8(display)[0].repeat(factor, axis=0).repeat(factor, axis=1)
    # Find the tile by its first pixel block, then compare every pixel.
    size = expected.shape[0]
    matches = [
        (y, x)
        for y, x in zip(*np.nonzero((picture == expected[0, 0]).all(axis=-1)), strict=True)
        if y + size <= picture.shape[0] and x + size <= picture.shape[1]
        and np.array_equal(picture[y : y + size, x : x + size], expected)
    ]  # fmt: skip
    assert len(matches) == 2  # the image and its (identical) overlay, each pixel a 12 x 12 block


def test_large_probes_are_shrunk_to_the_tile() -> None:
    display, overlays = torch.rand(1, 3, 400, 400, generator=_generator(43)), torch.rand(1, 3, 400, 400)
    large = method_grid(display, overlays, ["a"])
    small = method_grid(display[..., :200, :200], overlays[..., :200, :200], ["a"])
    assert large.shape == small.shape  # both drawn as 200-px tiles


def test_scores_are_written_under_the_overlays_only() -> None:
    display, overlays = _grid_inputs(1, seed=44)
    methods = {"SaS": overlays[0], "Grad-CAM": overlays[0]}
    low = probe_panel(display[0], methods, "t", scores={"SaS": {"roi_share": 0.11}, "Grad-CAM": {"roi_share": 0.2}})
    high = probe_panel(display[0], methods, "t", scores={"SaS": {"roi_share": 0.99}, "Grad-CAM": {"roi_share": 0.2}})
    missing = probe_panel(display[0], methods, "t", scores={"SaS": {"roi_share": float("nan")}})
    plain = probe_panel(display[0], methods, "t")
    assert low.shape == high.shape == missing.shape and low.shape[1] == plain.shape[1]
    assert low.shape[0] > plain.shape[0]  # a caption line under the tiles
    changed = (low != high).any(axis=-1)
    rows, columns = np.nonzero(changed)
    assert rows.min() >= plain.shape[0] - 10  # below the tiles
    assert columns.max() < 2 * low.shape[1] / 3  # under SaS's tile, not Grad-CAM's

    grid_low = method_grid(display, overlays, ["a"], scores={"roi_share": [0.1]})
    grid_high = method_grid(display, overlays, ["a"], scores={"roi_share": torch.tensor([0.9])})
    assert grid_low.shape == grid_high.shape and not np.array_equal(grid_low, grid_high)


def test_probe_panel_wraps_tiles_into_balanced_rows() -> None:
    display, overlays = _grid_inputs(8, seed=45)
    eight = dict(zip(EIGHT_METHODS, overlays, strict=True))
    wrapped = probe_panel(display[0], eight, "t")
    one_row = probe_panel(display[0], eight, "t", max_columns=9)
    two = probe_panel(display[0], dict(list(eight.items())[:2]), "t")
    four = probe_panel(display[0], dict(list(eight.items())[:3]), "t")  # 4 tiles: 2 x 2
    assert wrapped.shape[1] == two.shape[1] and wrapped.shape[0] > 2 * two.shape[0]  # 3 rows of 3
    assert one_row.shape[0] == two.shape[0] and one_row.shape[1] > 2 * two.shape[1]
    assert four.shape[1] < two.shape[1] and four.shape[0] > two.shape[0]


def test_figure_argument_errors_name_the_argument() -> None:
    display, overlays = _grid_inputs(2, seed=46)
    with pytest.raises(ValueError, match=r"probe_panel: `max_columns` must be an integer >= 1, got 0"):
        probe_panel(display[0], {"SaS": overlays[0]}, "t", max_columns=0)
    with pytest.raises(ValueError, match=r"probe_panel: `scores` names methods that are not in `overlays`.*'LIME'"):
        probe_panel(display[0], {"SaS": overlays[0]}, "t", scores={"LIME": {"roi_share": 0.1}})
    with pytest.raises(ValueError, match=r"method_grid: `scores\['roi_share'\]` must have one value per image \(2\)"):
        method_grid(display, overlays, ["a", "b"], scores={"roi_share": [0.1]})
    with pytest.raises(ValueError, match=r"comparison_grid: `panel_inches` must be a positive number, got 0"):
        comparison_grid(display, {"SaS": overlays}, ["a", "b"], panel_inches=0)


# --------------------------------------------------------------------------- to_uint8


def test_to_uint8_rounds_clips_and_moves_channels_last() -> None:
    values = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 0.499, 1.0, 1.5])
    # Channels differ (full, half, quarter) so a channel mix-up would show.
    images = values.view(1, 1, 1, 7) * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    images = torch.cat([images, images.flip(-1)])  # two images, different content
    result = to_uint8(images)
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    assert result.shape == (2, 1, 7, 3)
    assert result[0, 0, :, 0].tolist() == [0, 0, 0, 1, 127, 255, 255]
    assert result[0, 0, :, 1].tolist() == [0, 0, 0, 0, 64, 128, 191]
    assert result[1, 0, :, 0].tolist() == [255, 255, 127, 1, 0, 0, 0]


def test_to_uint8_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"to_uint8: `images` must have shape \[N, 3, H, W\], got \[3, 4, 4\]"):
        to_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="to_uint8: `images` must be a torch.Tensor, got ndarray"):
        to_uint8(np.zeros((1, 3, 4, 4)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- save_png


def test_save_png_round_trips_and_creates_folders(tmp_path: Path) -> None:
    picture = method_grid(*_grid_inputs(2, seed=12), ["a", "b"], title="round trip")
    path = tmp_path / "nested" / "folder" / "grid.png"
    save_png(picture, path)
    read_back = matplotlib.image.imread(path)  # float32 in [0, 1] for PNG
    assert read_back.shape == picture.shape
    np.testing.assert_array_equal(np.round(read_back * 255).astype(np.uint8), picture)


def test_save_png_rejects_wrong_arrays(tmp_path: Path) -> None:
    with pytest.raises(
        TypeError,
        match="save_png: `array` must be a numpy uint8 array, got numpy array of float64",
    ):
        save_png(np.zeros((4, 4, 3)), tmp_path / "a.png")
    with pytest.raises(
        ValueError,
        match=r"save_png: `array` must have shape \[H, W, 3\], got \[4, 4\]",
    ):
        save_png(np.zeros((4, 4), dtype=np.uint8), tmp_path / "a.png")


# --------------------------------------------------------------------------- global state


# Run in a fresh interpreter: in a full test run another module has usually imported
# pyplot long before this test, so an in-process check could never fail.
_PYPLOT_CHECK = """
import sys
import torch
from lightning_sas.report import render
images = torch.rand(2, 3, 16, 16)
display = render.to_display(images, mean=[0.5], std=[0.25])
overlays = render.overlay(display, torch.rand(2, 16, 16))
pictures = [
    render.method_grid(display, overlays, ["a", "b"], title="t"),
    render.probe_panel(display[0], {"SaS": overlays[0]}, "t"),
    render.comparison_grid(display, {"SaS": overlays}, ["a", "b"], title="t"),
]
render.save_png(pictures[0], sys.argv[1])
print("rendered", len(pictures), "pyplot imported:", "matplotlib.pyplot" in sys.modules)
"""


def test_render_does_not_import_pyplot(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _PYPLOT_CHECK, str(tmp_path / "grid.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    # The figures were really drawn (and saved) before the check was made.
    assert "rendered 3 pyplot imported:" in completed.stdout
    assert (tmp_path / "grid.png").is_file()
    assert completed.stdout.strip().endswith("pyplot imported: False"), completed.stdout
    assert not hasattr(render, "plt") and not hasattr(render, "pyplot")


def _current_backend() -> str | None:
    # Plain get_backend() imports pyplot to resolve an "auto" backend, which would
    # itself change global state; matplotlib >= 3.10 can ask without resolving.
    try:
        return matplotlib.get_backend(auto_select=False)  # type: ignore[call-arg]
    except TypeError:
        return matplotlib.get_backend()


def test_render_leaves_backend_and_rcparams_alone() -> None:
    backend_before = _current_backend()
    style_keys = (
        "font.size",
        "figure.dpi",
        "figure.facecolor",
        "image.cmap",
        "image.interpolation",
    )
    style_before = {key: matplotlib.rcParams[key] for key in style_keys}

    display, overlays = _grid_inputs(2, seed=14)
    method_grid(display, overlays, ["a", "b"], title="t")
    probe_panel(display[0], {"SaS": overlays[0]}, "t")

    assert _current_backend() == backend_before
    assert {key: matplotlib.rcParams[key] for key in style_keys} == style_before
