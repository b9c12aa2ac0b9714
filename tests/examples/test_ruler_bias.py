"""The audit must agree with what the model really does: biased run alerts, clean run does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ruler_bias" / "train.py"


def load_train_module():
    spec = importlib.util.spec_from_file_location("ruler_bias_train", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = [
    "--epochs", "3", "--image-size", "32", "--train-size", "1000", "--val-size", "200",
    "--probes", "8", "--sas-iterations", "20", "--width", "8", "--quiet", "--every-n-epochs", "1",
]  # fmt: skip


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


@pytest.mark.parametrize("seed", [4242, 4243])
def test_nightly_audit_flags_the_biased_checkpoint_on_a_fresh_probe_set(
    seed: int, runs: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The CLI at its defaults (methods, SaS settings, the default alert rule), on probes neither model
    saw with rulers on 75% of both classes as nightly probe sets have them, decides as the behaviour
    says: exit 1 for the biased checkpoint, 0 for the clean one, with and without ruler examples."""
    from lightning_sas.cli.main import main

    monkeypatch.syspath_prepend(str(TRAIN_SCRIPT.parent))
    data = importlib.import_module("data")
    from lightning_sas.probes.export import export_probes
    from lightning_sas.probes.export_artifacts import export_artifacts

    fresh = data.make_splits(
        n_train=200, n_val=200, n_counterfactual=1, image_size=32, p_ruler_malignant=0.75, p_ruler_benign=0.75,
        seed=seed,
    )  # fmt: skip
    probes = export_probes(
        fresh["val"], tmp_path / "probes", count=16, seed=seed, mean=data.MEAN, std=data.STD, item_keys={"mask": 2}
    )
    with_ruler = fresh["train"].has_ruler.nonzero().flatten()[:16]
    export_artifacts(
        fresh["train"].normalised_images()[with_ruler], fresh["train"].ruler_masks[with_ruler] > 0,
        probes / "artifacts", mean=data.MEAN, std=data.STD,
    )  # fmt: skip
    codes = {}
    for name, summary in runs.items():
        for artifacts in (False, True):
            extra = ["--artifacts", str(probes / "artifacts"), "--artifact-class", "1"] if artifacts else []
            codes[name, artifacts] = main([
                "audit", "--checkpoint", summary["checkpoint"], "--model", "model:LesionClassifier",
                "--probe", str(probes), "--masks", str(probes / "masks"), "--labels", str(probes / "labels.csv"),
                *extra, "--image-size", "32", "--mean", *map(str, data.MEAN), "--std", *map(str, data.STD),
                "--no-faithfulness", "--device", "cpu", "--out", str(tmp_path / f"{name}_{artifacts}"),
            ])  # fmt: skip
    expected = {("biased", False): 1, ("biased", True): 1, ("clean", False): 0, ("clean", True): 0}
    assert codes == expected, capsys.readouterr()
