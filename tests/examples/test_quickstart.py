"""End-to-end check of ``examples/quickstart.py`` (what ``make demo`` runs), on a reduced configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import matplotlib.image
import numpy as np
import pytest
import torch

from lightning_sas.report.render import comparison_grid

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
# Small enough for ~20 s on two shared CPU cores, large enough to reach >90% accuracy.
REDUCED_ARGS = ["--train-size", "800", "--val-size", "200", "--epochs", "3", "--sas-iterations", "20"]


@pytest.fixture(scope="module")
def quickstart() -> ModuleType:
    """The example script, imported as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("quickstart_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def run(quickstart: ModuleType, tmp_path_factory: pytest.TempPathFactory):
    """One reduced run of ``main``, shared by the tests below (training is the slow part)."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("quickstart") / "figure.png"
    result = quickstart.main([*REDUCED_ARGS, "--out", str(out)])
    # The script (and Lightning's CPU set-up) must leave the thread settings alone.
    assert torch.get_num_threads() == threads
    return result


def _package_grid_shape(rows: int) -> tuple[int, int]:
    """Height and width of the package's comparison grid for ``rows`` x (image + 2 methods)."""
    blank = torch.zeros(rows, 3, 32, 32)
    picture = comparison_grid(blank, {"Grad-CAM": blank, "SaS": blank}, ["label"] * rows, title="title")
    return picture.shape[:2]


def test_writes_png_with_one_row_per_probe(run) -> None:
    assert run.out.is_file()
    picture = matplotlib.image.imread(run.out)
    assert picture.ndim == 3 and picture.shape[-1] in (3, 4)
    # 8 rows of image | Grad-CAM | SaS, laid out by the package's renderer, whose picture
    # size is fixed by the grid's shape (not by the text).
    assert picture.shape[:2] == _package_grid_shape(8)
    assert picture.shape[0] > 2 * picture.shape[1]
    # Not blank: the overlays put plenty of colour into the picture.
    assert float(np.asarray(picture[..., :3], dtype=np.float64).std()) > 0.1


def test_validation_accuracy_is_high(run) -> None:
    assert run.val_accuracy > 0.9


def test_both_methods_point_at_the_class_region(run) -> None:
    assert run.chance == pytest.approx(100 / 1024)
    assert set(run.methods) == {"Grad-CAM", "SaS"}
    for name, method in run.methods.items():
        assert method.maps.shape == (8, 32, 32), name
        assert float(method.maps.min()) >= 0.0 and float(method.maps.max()) <= 1.0, name
        assert method.seconds > 0, name
        share, mass = float(method.roi_share.mean()), float(method.roi_mass.mean())
        # Clearly more than chance: at least 4x the region's area share of the top pixels
        # (measured 0.58-0.79 for both methods over seeds 0-2, chance 0.098).
        assert share > 4 * run.chance, f"{name}: roi_share {share:.3f} vs chance {run.chance:.3f}"
        # Mass depends on the map's scale: an SaS map is a dense ordering (non-zero almost
        # everywhere), so its mass stays nearer chance (measured 0.17-0.19) than Grad-CAM's.
        assert mass > run.chance, f"{name}: roi_mass {mass:.3f} vs chance {run.chance:.3f}"


def test_figure_is_the_package_grid_and_grows_with_rows(quickstart: ModuleType) -> None:
    data = quickstart.make_data(4, seed=3)
    maps = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = torch.full((4,), 0.5)
    sizes = []
    for rows in (2, 4):
        results = {
            "Grad-CAM": quickstart.MethodResult(maps[:rows], 0.0, scores[:rows], scores[:rows]),
            "SaS": quickstart.MethodResult(maps[:rows].flip(-1), 0.0, scores[:rows], scores[:rows]),
        }
        picture = quickstart.render_figure(data.images[:rows], results, data.region, ["label"] * rows, "title")
        assert picture.dtype == np.uint8 and picture.shape[-1] == 3
        assert picture.shape[:2] == _package_grid_shape(rows)
        sizes.append(picture.shape[:2])
    assert sizes[0][1] == sizes[1][1]  # same width
    assert sizes[1][0] > sizes[0][0]  # taller with more rows


def test_outline_is_dashed_white_just_outside_the_region(quickstart: ModuleType) -> None:
    region = quickstart.region_mask()
    pictures = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.9
    outlined = quickstart.outline_region(pictures, region)
    white = (outlined == 1.0).all(dim=1)  # [2, H, W]
    assert torch.equal(white[0], white[1])
    # The ring of pixels touching the region from outside (top 3, left 19, 10 x 10 at 32 px).
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[2:14, 18:30] = True
    ring[3:13, 19:29] = False
    assert not bool((white[0] & ~ring).any())  # nothing drawn off the ring, region kept
    assert torch.equal(outlined[:, :, ~ring], pictures[:, :, ~ring])
    # Dashed: about half of the ring, with breaks on every side.
    drawn = int(white[0].sum())
    assert 0.3 * int(ring.sum()) < drawn < 0.7 * int(ring.sum())
    for side in (white[0, 2, 18:30], white[0, 13, 18:30], white[0, 2:14, 18], white[0, 2:14, 29]):
        assert bool(side.any()) and not bool(side.all())
    assert not pictures.eq(1.0).all(dim=1).any()  # the input itself is left alone


def test_make_data_is_seeded_and_in_range(quickstart: ModuleType) -> None:
    first = quickstart.make_data(16, seed=5)
    again = quickstart.make_data(16, seed=5)
    other = quickstart.make_data(16, seed=6)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (16, 3, 32, 32) and first.images.dtype == torch.float32
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0
    assert int(first.region.sum()) == 100 and bool(first.region[3, 19]) and not bool(first.region[16, 16])
