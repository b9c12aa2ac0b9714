"""SASAuditCallback with a real Trainer: what it logs, when, and that training does not notice."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_models import ROI_THIRD, LitClassifier, cheap_methods, corner_dataset, fit, loaders, make_trainer, read_events
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, TensorDataset

from lightning_sas import GradCAM, SaS, SASAuditCallback
from lightning_sas.methods import METHODS


def test_logs_grids_panels_scalars_and_raw_maps(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=cheap_methods(), class_names=["plain", "corner"])
    trainer, _ = fit(tmp_path, callback, max_epochs=2)
    events = read_events(trainer.logger.log_dir)
    steps_per_epoch = 3  # 48 images / batch 16
    expected_steps = [steps_per_epoch, 2 * steps_per_epoch]

    images = events.Tags()["images"]
    assert {"audit/grid/sas", "audit/grid/gradcam"} <= set(images)
    # TensorBoard sorts tags: the method grids come together, before the per-probe panels.
    assert sorted(images)[:2] == ["audit/grid/gradcam", "audit/grid/sas"]
    assert {f"audit/probe_{i:02d}" for i in range(4)} <= set(images)
    for tag in ("audit/grid/sas", "audit/probe_00"):
        logged = events.Images(tag)
        assert [event.step for event in logged] == expected_steps
        assert len({(event.width, event.height) for event in logged}) == 1  # same size every audit
    grid, panel = events.Images("audit/grid/sas")[0], events.Images("audit/probe_00")[0]
    assert grid.height > 2 * grid.width  # four rows of image | overlay
    assert panel.width > panel.height  # image | one overlay per method

    scalars = events.Tags()["scalars"]
    for method in ("sas", "gradcam"):
        shares = events.Scalars(f"audit/{method}/roi_share")
        assert [event.step for event in shares] == expected_steps
        assert all(0.0 <= event.value <= 1.0 for event in shares)
        assert [event.step for event in events.Scalars(f"audit/{method}/roi_mass")] == expected_steps
        # Drift needs a previous audit: from the second audit on.
        assert [event.step for event in events.Scalars(f"audit/{method}/agreement")] == expected_steps[1:]
    assert [event.step for event in events.Scalars("audit/seconds")] == expected_steps
    assert "audit/manifest/text_summary" in events.Tags()["tensors"]
    assert set(scalars) >= {"audit/seconds"}

    for epoch in (0, 1):
        raw = np.load(Path(trainer.logger.log_dir) / "audits" / f"epoch={epoch}.npz")
        assert raw["maps_sas"].shape == raw["maps_gradcam"].shape == (4, 16, 16)
        assert list(raw["names"]) == [entry["name"] for entry in callback.manifest]


def test_probe_selection_is_stratified_and_deterministic(tmp_path: Path) -> None:
    first = SASAuditCallback(probe=6, methods=["gradcam"], seed=3)
    fit(tmp_path / "a", first, max_epochs=1)
    second = SASAuditCallback(probe=6, methods=["gradcam"], seed=3)
    fit(tmp_path / "b", second, max_epochs=1)
    other_seed = SASAuditCallback(probe=6, methods=["gradcam"], seed=4)
    fit(tmp_path / "c", other_seed, max_epochs=1)
    assert first.manifest == second.manifest
    assert [e["index"] for e in first.manifest] != [e["index"] for e in other_seed.manifest]
    assert sorted(e["label"] for e in first.manifest) == [0, 0, 0, 1, 1, 1]


def test_probe_as_indices_and_as_dataset(tmp_path: Path) -> None:
    by_index = SASAuditCallback(probe=[5, 1, 7], methods=["gradcam"])
    fit(tmp_path / "a", by_index, max_epochs=1)
    assert [e["index"] for e in by_index.manifest] == [5, 1, 7]
    own = corner_dataset(count=3, seed=9)
    as_dataset = SASAuditCallback(probe=own, methods=["gradcam"])
    fit(tmp_path / "b", as_dataset, max_epochs=1)
    assert [e["name"] for e in as_dataset.manifest] == ["probe[0]", "probe[1]", "probe[2]"]


def test_schedule_every_n_epochs_final_audit_and_other_stages(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, every_n_epochs=2, methods=["gradcam"])
    trainer, model = fit(tmp_path, callback, max_epochs=3, num_sanity_val_steps=2)
    # Epoch 1 by the schedule, epoch 2 because fit ended without auditing it; none in sanity check.
    assert callback.audited_epochs == [1, 2]
    events = read_events(trainer.logger.log_dir)
    assert [event.step for event in events.Images("audit/grid/gradcam")] == [6, 9]
    _, val = loaders(corner_dataset())
    trainer.validate(model, val, verbose=False)
    trainer.test(model, val, verbose=False)
    trainer.predict(model, val)
    assert callback.audited_epochs == [1, 2]
    assert len(read_events(trainer.logger.log_dir).Images("audit/grid/gradcam")) == 2


def snapshot_training_state(trainer: L.Trainer, model: LitClassifier) -> dict:
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},  # includes BatchNorm statistics
        "optimizer": trainer.optimizers[0].state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "torch_draw": torch.rand(4),
        "numpy_draw": np.random.rand(4),
        "python_draw": random.random(),
    }


def test_training_is_bit_identical_with_and_without_the_audit(tmp_path: Path) -> None:
    without = snapshot_training_state(*fit(tmp_path / "without", None, max_epochs=3))
    callback = SASAuditCallback(probe=4, methods=cheap_methods())
    trainer, model = fit(tmp_path / "with", callback, max_epochs=3)
    assert callback.audited_epochs == [0, 1, 2]
    with_audit = snapshot_training_state(trainer, model)
    for name, value in without["weights"].items():
        assert torch.equal(with_audit["weights"][name], value), name
    for param_id, state in without["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(with_audit["optimizer"]["state"][param_id][key], value), (param_id, key)
    assert with_audit["optimizer"]["param_groups"] == without["optimizer"]["param_groups"]
    assert with_audit["scheduler"] == without["scheduler"]
    assert torch.equal(with_audit["torch_draw"], without["torch_draw"])
    assert np.array_equal(with_audit["numpy_draw"], without["numpy_draw"])
    assert with_audit["python_draw"] == without["python_draw"]


class BrokenMethod:
    name = "broken"

    def attribute(self, model, images, targets):
        raise RuntimeError("attribution exploded")


def test_failing_audit_warns_and_training_continues(tmp_path: Path) -> None:
    reference = snapshot_training_state(*fit(tmp_path / "ref", None, max_epochs=2))
    callback = SASAuditCallback(probe=2, methods=[BrokenMethod(), "gradcam"])
    with pytest.warns(
        UserWarning,
        match=r"audit at epoch \d is incomplete: broken failed and has no maps \(RuntimeError: attribution exploded\)",
    ):
        trainer, model = fit(tmp_path / "broken", callback, max_epochs=2)
    # The failing method loses only its own results: Grad-CAM's are kept and logged.
    assert trainer.current_epoch == 2 and callback.audited_epochs == [0, 1]
    assert all(
        "audit/gradcam/roi_share" in entry and "audit/broken/roi_share" not in entry for entry in callback.history
    )
    events = read_events(trainer.logger.log_dir)
    assert "audit/grid/gradcam" in events.Tags()["images"]
    problems_text = [
        event.tensor_proto.string_val[0].decode() for event in events.Tensors("audit/problems/text_summary")
    ]
    assert len(problems_text) == 2 and "broken failed" in problems_text[0]
    for name, value in reference["weights"].items():
        assert torch.equal(model.state_dict()[name], value), name


def test_failing_audit_raises_when_asked(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=[BrokenMethod()], on_error="raise")
    with pytest.raises(RuntimeError, match="attribution exploded"):
        fit(tmp_path, callback, max_epochs=2)


def test_no_logger_fails_at_setup(tmp_path: Path) -> None:
    model = LitClassifier()
    train, val = loaders(corner_dataset())
    trainer = make_trainer(tmp_path, [SASAuditCallback(probe=2)], logger=False)
    with pytest.raises(MisconfigurationException, match="no logger"):
        trainer.fit(model, train, val)
    assert model.training_steps == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": 0}, "`every_n_epochs` must be an integer >= 1, got 0"),
        ({"methods": ("sas", "shapley")}, "unknown method name 'shapley'"),
        ({"mean": "0.5"}, r"`mean` must be a list of numbers \(1 for every channel, or 1 per channel\), got '0.5'"),
        ({"mean": [0.5, 0.4], "std": [0.2, 0.2, 0.2]}, "`mean` and `std` must have the same number of values"),
        ({"std": [0.2, 0.0, 0.2]}, r"`std` values must be positive, got \[0.2, 0.0, 0.2\]"),
        ({"output": 1.5}, "`output` must be None, an index"),
        ({"item_keys": {"picture": "x"}}, r"`item_keys` maps the fields 'image', .*got the field 'picture'"),
        ({"probe": 0}, "`probe` must be at least 1, got 0"),
        ({"target": "truth"}, "`target` must be 'pred' or 'label', got 'truth'"),
        ({"on_error": "ignore"}, "`on_error` must be 'warn' or 'raise'"),
        ({"shortcut_threshold": 1.5}, r"`shortcut_threshold` must be in \[0, 1\]"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        SASAuditCallback(**kwargs)


@pytest.mark.parametrize(
    ("callback_kwargs", "val", "message"),
    [
        ({"probe": 100}, True, r"`probe`=100 asks for more images than the validation set has \(48\)"),
        ({"probe": [3, 99]}, True, r"`probe` indices \[99\] are out of range"),
        ({"probe": 4}, False, "needs validation data"),
        ({"probe": 4, "mean": [0.5, 0.5, 0.5]}, "grey", r"`mean` must have 1 value for the 1-channel images, got 3"),
        (
            {"probe": 4, "std": [0.5, 0.5]},
            True,
            r"`std` must have 1 value \(for every channel\) or 3 \(one per channel\)",
        ),
    ],
)
def test_bad_configuration_fails_before_the_first_training_step(tmp_path: Path, callback_kwargs, val, message) -> None:
    model = LitClassifier()
    if val == "grey":
        model.net.features[0] = torch.nn.Conv2d(1, 8, 3, padding=1)
        train, validation = loaders(corner_dataset(channels=1))
    else:
        train, validation = loaders(corner_dataset())
    trainer = make_trainer(tmp_path, [SASAuditCallback(methods=["gradcam"], **callback_kwargs)])
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(model, train, validation if val else None)
    assert model.training_steps == 0


def test_other_loggers_get_scalars_and_png_files(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"])
    trainer, _ = fit(tmp_path, callback, max_epochs=1, logger=CSVLogger(tmp_path, name="csv"))
    log_dir = Path(trainer.logger.log_dir)
    assert (log_dir / "audits" / "images" / "audit" / "grid" / "gradcam" / "step=3.png").is_file()
    assert (log_dir / "audits" / "images" / "audit" / "probe_01" / "step=3.png").is_file()
    metrics = (log_dir / "metrics.csv").read_text()
    assert "audit/gradcam/roi_share" in metrics and "audit/seconds" in metrics
    assert (log_dir / "audits" / "epoch=0.npz").is_file()


def rank_correlations(first: np.ndarray, second: np.ndarray) -> list[float]:
    """Spearman correlation (scipy's) of each pair of maps ``[N, H, W]``."""
    return [float(spearmanr(a.ravel(), b.ravel())[0]) for a, b in zip(first, second, strict=True)]


def test_mixed_precision_module(tmp_path: Path) -> None:
    # The scale-free objective: this small model's logits are too small for the paper's balance, whose
    # maps would be total-variation noise in either precision, with nothing to compare.
    callback = SASAuditCallback(probe=2, methods=[SaS(iterations=3, num_masks=4, objective="scale_free"), GradCAM()])
    trainer, model = fit(tmp_path, callback, max_epochs=1, precision="bf16-mixed")
    assert callback.audited_epochs == [0]
    raw = np.load(Path(trainer.logger.log_dir) / "audits" / "epoch=0.npz")
    # The same model (the audit ran after the last training step) and probes, in float32.
    images = callback.probes.images
    model.eval()  # as the audit explains it (Dropout off, BatchNorm running statistics)
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)
    assert raw["targets"].tolist() == predictions.tolist()  # bf16 did not change what is explained
    full = {name: method.attribute(model, images, predictions).numpy() for name, method in callback.methods.items()}
    for name, maps in full.items():
        mixed = raw[f"maps_{name}"]
        assert mixed.shape == maps.shape and np.isfinite(mixed).all(), name
    # The audit ran in the module's precision: SaS's optimisation moves with bf16 rounding.
    assert not np.array_equal(raw["maps_sas"], full["sas"])
    # Grad-CAM is one forward and one gradient: measured max |bf16 - fp32| 0.003, Spearman 0.99996.
    assert np.abs(raw["maps_gradcam"] - full["gradcam"]).max() < 0.02
    assert min(rank_correlations(raw["maps_gradcam"], full["gradcam"])) > 0.999
    # SaS (3 iterations) optimises from bf16 scores: measured Spearman 0.82 and 0.93 with the
    # fp32 maps, within its own sampling noise (fp32 with another seed: 0.71-0.90 at 3
    # iterations); unrelated or inverted maps give about 0 or below.
    assert min(rank_correlations(raw["maps_sas"], full["sas"])) > 0.6


def test_resume_uses_the_same_probes_and_reports_changed_ones(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    train, val = loaders(corner_dataset())
    first = SASAuditCallback(probe=4, methods=["gradcam"], seed=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[first, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LitClassifier(), train, val)
    last = tmp_path / "ckpt" / "last.ckpt"

    # Resume with a callback that would pick other probes (another seed): the manifest wins.
    resumed = SASAuditCallback(probe=4, methods=["gradcam"], seed=99)
    trainer = make_trainer(tmp_path, [resumed], max_epochs=2)
    trainer.fit(LitClassifier(), train, val, ckpt_path=last)
    assert resumed.manifest == first.manifest
    assert resumed.audited_epochs == [0, 1] and resumed.probe_changes == []

    # Asking for another probe count on resume is reported; the checkpoint's probes win.
    recount = SASAuditCallback(probe=6, methods=["gradcam"])
    trainer = make_trainer(tmp_path, [recount], max_epochs=2)
    with pytest.warns(UserWarning, match=r"`probe`=6 is ignored on resume; the checkpoint's 4 probes"):
        trainer.fit(LitClassifier(), train, val, ckpt_path=last)
    assert recount.manifest == first.manifest

    # The validation images changed under the same indices: reported, not silently accepted.
    changed = corner_dataset(seed=5)
    trainer = make_trainer(tmp_path, [changed_callback := SASAuditCallback(probe=4, methods=["gradcam"])], max_epochs=2)
    with pytest.warns(UserWarning, match="probe set changed since the checkpoint"):
        trainer.fit(LitClassifier(), train, DataLoader(changed, batch_size=16), ckpt_path=last)
    assert changed_callback.probe_changes and len(changed_callback.probe_changes[0]["probes"]) == 4


def test_shortcut_alert_warns_logs_text_and_can_stop_training(tmp_path: Path) -> None:
    # Every pixel is ROI: any map puts all its mass there, so the alert must fire.
    images, labels, _ = corner_dataset().tensors
    everywhere = TensorDataset(images, labels, torch.ones(len(labels), 16, 16))
    callback = SASAuditCallback(
        probe=2, methods=["gradcam"], shortcut_threshold=0.5, stop_on_shortcut=True, item_keys=ROI_THIRD
    )
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=5)
    with pytest.warns(
        UserWarning,
        match=r"^Shortcut alert at epoch 0: gradcam puts 1.00 of its top-ranked pixels on the ROI "
        r"\(roi_share 1.00 > 0.5\)",
    ):
        trainer.fit(LitClassifier(), *loaders(everywhere))
    assert trainer.current_epoch == 1  # stopped cleanly after the first audited epoch
    assert callback.alerts[0]["crossed"] == [{"criterion": "roi_share", "method": "gradcam"}]
    assert callback.alerts[0]["scores"]["gradcam"]["roi_share"] == 1.0
    assert callback.state_dict()["alerts"] == callback.alerts
    events = read_events(trainer.logger.log_dir)
    assert "audit/alert/text_summary" in events.Tags()["tensors"]


def test_lightning_cli_configures_the_callback_from_yaml(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        """
trainer:
  callbacks:
    - class_path: lightning_sas.SASAuditCallback
      init_args:
        probe: 8
        every_n_epochs: 2
        methods: [gradcam, sas]
        target: label
        mean: [0.5, 0.5, 0.5]
        std: [0.25, 0.25, 0.25]
        shortcut_threshold: 0.7
        class_names: [benign, malignant]
"""
    )
    cli = LightningCLI(LitClassifier, run=False, args=["--config", str(config)], save_config_callback=None)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, SASAuditCallback)]
    assert callback.probe == 8 and callback.every_n_epochs == 2 and callback.target == "label"
    assert list(callback.methods) == ["gradcam", "sas"]
    assert callback.mean == [0.5, 0.5, 0.5] and callback.shortcut_threshold == 0.7


def test_warm_start_seeds_later_audits_with_fewer_iterations(tmp_path: Path) -> None:
    sas = SaS(iterations=6, num_masks=3)
    forwards: list[int] = []
    # Only SaS's own forwards are counted: no sanity check, faithfulness or cost timing.
    callback = SASAuditCallback(
        probe=2, methods=[sas], warm_start_iterations=2, sanity=False, faithfulness=False, cost_warning_share=None
    )
    L.seed_everything(0, verbose=False)
    model = LitClassifier()
    model.net.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, *loaders(corner_dataset()))
    # SaS forwards the 2 probes x 2 interior masks x {insertion, deletion} = 8 items per iteration.
    sas_iterations = [size for size in forwards if size == 8]
    assert len(sas_iterations) == 6 + 2
    assert set(callback.state_dict()["previous_masks"]) == {"sas"}
    with pytest.raises(ValueError, match="`warm_start_iterations` must be an integer >= 1"):
        SASAuditCallback(warm_start_iterations=0)


class FailingAuditLogger(CSVLogger):
    """A logger whose disk is 'full' for the audit's metrics."""

    def log_metrics(self, metrics, step=None):
        if any(key.startswith("audit/") for key in metrics):
            raise OSError("No space left on device")
        super().log_metrics(metrics, step)


def test_failure_while_writing_the_audit_does_not_stop_training(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"])
    with pytest.warns(
        UserWarning,
        match=r"audit at epoch \d ran but could not be written \(scalars: FailingAuditLogger: OSError: No space left",
    ):
        trainer, _ = fit(tmp_path, callback, max_epochs=2, logger=FailingAuditLogger(tmp_path, name="csv"))
    assert trainer.current_epoch == 2 and callback.audited_epochs == [0, 1]
    # The failing scalars did not keep the pictures and raw maps from being written.
    log_dir = Path(trainer.logger.log_dir)
    assert (log_dir / "audits" / "images" / "audit" / "grid" / "gradcam" / "step=6.png").is_file()
    assert (log_dir / "audits" / "epoch=1.npz").is_file()


def test_probes_are_found_when_the_first_epoch_does_not_validate(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"])
    fit(tmp_path, callback, max_epochs=2, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    assert len(callback.manifest) == 2 and callback.audited_epochs == [0, 1]


def test_every_registered_method_by_name_in_one_fit(tmp_path: Path) -> None:
    """``methods=`` takes every registered name at its defaults; each gets its scores, grid and faithfulness."""
    names = list(METHODS)
    assert set(names) == {"sas", "gradcam", "ig", "smoothgrad", "occlusion", "lime", "gradientshap", "saliency"}
    callback = SASAuditCallback(probe=2, methods=names, sanity=False)
    trainer, _ = fit(tmp_path, callback, max_epochs=1)
    events = read_events(trainer.logger.log_dir)
    assert {f"audit/grid/{name}" for name in names} <= set(events.Tags()["images"])
    for name in names:
        for score in ("roi_share", "roi_mass", "deletion_auc", "insertion_auc"):
            (event,) = events.Scalars(f"audit/{name}/{score}")
            assert 0.0 <= event.value <= 1.0, (name, score)
    # The per-probe panel holds the image and all eight overlays.
    panel = events.Images("audit/probe_00")[0]
    assert panel.height > panel.width / 3  # wrapped into rows, not one 9-tile strip
