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

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
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


def test_writes_png_with_one_row_per_probe(quickstart: ModuleType, run) -> None:
    assert run.out.is_file()
    picture = matplotlib.image.imread(run.out)
    assert picture.ndim == 3 and picture.shape[-1] in (3, 4)
    # 8 rows of image | Grad-CAM | SaS: a tall figure whose size the layout fixes.
    width, height = quickstart.figure_inches(rows=8, columns=3)
    assert picture.shape[:2] == (round(height * quickstart.FIGURE_DPI), round(width * quickstart.FIGURE_DPI))
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


def test_figure_height_grows_with_rows(quickstart: ModuleType) -> None:
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
        width, height = quickstart.figure_inches(rows=rows, columns=3)
        assert picture.shape[:2] == (round(height * quickstart.FIGURE_DPI), round(width * quickstart.FIGURE_DPI))
        sizes.append(picture.shape[:2])
    assert sizes[0][1] == sizes[1][1]  # same width
    assert sizes[1][0] > sizes[0][0]  # taller with more rows


def test_make_data_is_seeded_and_in_range(quickstart: ModuleType) -> None:
    first = quickstart.make_data(16, seed=5)
    again = quickstart.make_data(16, seed=5)
    other = quickstart.make_data(16, seed=6)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (16, 3, 32, 32) and first.images.dtype == torch.float32
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0
    assert int(first.region.sum()) == 100 and bool(first.region[3, 19]) and not bool(first.region[16, 16])
