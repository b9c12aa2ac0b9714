"""The audit must agree with what the model really does: biased run alerts, clean run does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "ruler_bias" / "train.py"


def load_train_module():
    spec = importlib.util.spec_from_file_location("ruler_bias_train", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = [
    "--epochs", "3", "--image-size", "32", "--train-size", "1000", "--val-size", "200",
    "--probes", "8", "--sas-iterations", "20", "--width", "8", "--quiet",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    train = load_train_module()
    out = tmp_path_factory.mktemp("ruler_bias")
    return {
        "biased": train.run([*SMALL, "--out", str(out)]),
        "clean": train.run([*SMALL, "--clean", "--out", str(out)]),
    }


def shortcut_in_behaviour(summary: dict) -> bool:
    """The model leans on the ruler: swapping the ruler bias costs it well over 15 points of accuracy."""
    return summary["val_acc"] - summary["counterfactual_acc"] > 0.15


def test_biased_run_uses_the_ruler_and_the_audit_says_so(runs: dict[str, dict]) -> None:
    biased = runs["biased"]
    assert biased["val_acc"] > 0.75
    assert shortcut_in_behaviour(biased), biased
    assert biased["alerts"], "the model leans on the ruler but no shortcut alert fired"
    assert all(alert["crossed"] for alert in biased["alerts"])


def test_clean_run_neither_uses_the_ruler_nor_alerts(runs: dict[str, dict]) -> None:
    clean = runs["clean"]
    assert not shortcut_in_behaviour(clean), clean
    assert clean["alerts"] == [], "no ruler bias in the data, yet a shortcut alert fired"


def test_alerts_agree_with_behaviour(runs: dict[str, dict]) -> None:
    for name, summary in runs.items():
        assert bool(summary["alerts"]) == shortcut_in_behaviour(summary), name


def test_demo_writes_the_audit_and_a_checkpoint(runs: dict[str, dict]) -> None:
    for summary in runs.values():
        log_dir = Path(summary["log_dir"])
        assert list(log_dir.glob("events.out.tfevents.*"))
        assert len(list((log_dir / "audits").glob("epoch=*.npz"))) == 3
        assert Path(summary["checkpoint"]).is_file()
        assert len(summary["rows"]) == 3
        assert sorted(Path(path).name for path in summary["grids"]) == ["last_gradcam_grid.png", "last_sas_grid.png"]
