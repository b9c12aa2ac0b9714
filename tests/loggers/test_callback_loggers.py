"""Several loggers at once: each gets the whole audit once, in its own form; a logger that cannot take
files still gets every scalar."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lit_models import LitClassifier, classic_classifier_class, corner_dataset, loaders, make_trainer, read_events

from lightning_sas import SASAuditCallback

IMAGE_TAGS = ("audit/grid/gradcam", "audit/probe_00", "audit/probe_01")
STEPS = [3, 6]  # 48 images / batch 16 = 3 steps per epoch, two epochs


def assert_points(points: list[tuple[int, float]], values: list[float]) -> None:
    """Logged (step, value) pairs: one per audit, at the audit's step, with the callback's values."""
    assert [step for step, _ in points] == STEPS
    assert [value for _, value in points] == pytest.approx(values)


def fit_with(
    tmp_path: Path, loggers: list[Logger], namespace: str = "lightning.pytorch", **callback_args
) -> tuple[L.Trainer, SASAuditCallback]:
    callback = SASAuditCallback(probe=2, methods=["gradcam"], sanity=False, **callback_args)
    L.seed_everything(0, verbose=False)
    if namespace == "lightning.pytorch":
        trainer, module = make_trainer(tmp_path, [callback], max_epochs=2, logger=loggers), LitClassifier()
    else:  # the classic namespace: its own Trainer, LightningModule and loggers
        import pytorch_lightning

        trainer = pytorch_lightning.Trainer(
            max_epochs=2,
            logger=loggers,
            callbacks=[callback],
            accelerator="cpu",
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        module = classic_classifier_class()()
    trainer.fit(module, *loaders(corner_dataset()))
    assert callback.audited_epochs == [0, 1]
    return trainer, callback


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_tensorboard_csv_mlflow_and_wandb_each_get_everything_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    pytest.importorskip(namespace)
    import importlib

    import wandb
    from mlflow.tracking import MlflowClient
    from test_logger_mlflow import stepped_images
    from test_logger_wandb import read_run, use_offline_wandb

    # The same loggers from the namespace the project imports them from.
    namespace_loggers = importlib.import_module(f"{namespace}.loggers")
    use_offline_wandb(monkeypatch, tmp_path)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tensorboard = namespace_loggers.TensorBoardLogger(tmp_path, name="tb")
    table = namespace_loggers.CSVLogger(tmp_path, name="csv")
    tracking = namespace_loggers.MLFlowLogger(
        experiment_name="audit", tracking_uri=tracking_uri, artifact_location=(tmp_path / "mlflow_artifacts").as_uri()
    )
    weights_and_biases = namespace_loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="audit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer, callback = fit_with(tmp_path, [tensorboard, table, tracking, weights_and_biases], namespace)
            wandb_run = Path(weights_and_biases.experiment.dir).parent
        finally:
            wandb.finish()
    # Every logger took its part: no failure and no logger left without pictures.
    messages = [str(warning.message) for warning in caught if "SASAuditCallback" in str(warning.message)]
    assert not [m for m in messages if "could not" in m or "failed" in m or "no local directory" in m], messages
    roi_shares = [entry["audit/gradcam/roi_share"] for entry in callback.history]

    # TensorBoard: each picture once per audit, the scores, the manifest, the chart layout.
    events = read_events(tensorboard.log_dir)
    for tag in IMAGE_TAGS:
        assert [event.step for event in events.Images(tag)] == STEPS, tag
    assert_points([(e.step, e.value) for e in events.Scalars("audit/gradcam/roi_share")], roi_shares)
    assert {"audit/manifest/text_summary", "custom_scalars__config__"} <= set(events.Tags()["tensors"])
    assert (Path(tensorboard.log_dir) / "audits" / "epoch=1.npz").is_file()  # raw maps: first directory

    # CSV: scalars in metrics.csv, each audit once; PNG and Markdown files under its directory.
    with open(Path(table.log_dir) / "metrics.csv", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row.get("audit/gradcam/roi_share")]
    assert_points([(int(row["step"]), float(row["audit/gradcam/roi_share"])) for row in rows], roi_shares)
    images = Path(table.log_dir) / "audits" / "images"
    assert sorted(str(path.relative_to(images)) for path in images.rglob("*.png")) == sorted(
        f"{tag}/step={step}.png" for tag in IMAGE_TAGS for step in STEPS
    )
    manifest_file = Path(table.log_dir) / "audits" / "text" / "audit_manifest.md"
    assert manifest_file.read_text(encoding="utf-8").count("## step") == 1

    # MLflow: stepped images once per tag and audit, metric histories, the manifest artifact.
    client = MlflowClient(tracking_uri=tracking_uri)
    assert stepped_images(client, tracking.run_id) == Counter({(tag, step): 1 for tag in IMAGE_TAGS for step in STEPS})
    history = client.get_metric_history(tracking.run_id, "audit/gradcam/roi_share")
    assert_points([(m.step, m.value) for m in history], roi_shares)
    artifacts = {entry.path for entry in client.list_artifacts(tracking.run_id, "audit/manifest")}
    assert artifacts == {"audit/manifest/step=0.md"}

    # W&B: each picture once per audit, the scores at trainer.global_step, the manifest table once.
    rows, _ = read_run(wandb_run)
    for tag in IMAGE_TAGS:
        assert [row["trainer/global_step"] for row in rows if f"{tag}/_type" in row] == STEPS, tag
    scored = [row for row in rows if "audit/gradcam/roi_share" in row]
    assert_points([(row["trainer/global_step"], row["audit/gradcam/roi_share"]) for row in scored], roi_shares)
    assert sum(row.get("audit/manifest/_type") == "table-file" for row in rows) == 1


class MemoryLogger(Logger):
    """A logger that keeps metrics in memory and has no directory (like a remote-only service)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


def test_a_logger_without_a_directory_gets_every_scalar_and_one_warning(tmp_path: Path) -> None:
    memory = MemoryLogger()
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, callback = fit_with(tmp_path, [memory, tensorboard])
    messages = [str(warning.message) for warning in caught if "SASAuditCallback" in str(warning.message)]
    assert len([m for m in messages if "MemoryLogger has no local directory" in m]) == 1
    assert not [m for m in messages if "could not" in m or "failed" in m], messages
    logged = [(step, metrics) for step, metrics in memory.metrics if "audit/seconds" in metrics]
    assert [step for step, _ in logged] == STEPS
    assert [metrics for _, metrics in logged] == [
        {key: value for key, value in entry.items() if key not in ("epoch", "step")} for entry in callback.history
    ]
    # The other logger is not held back: raw maps go to the first logger with a directory.
    assert (Path(tensorboard.log_dir) / "audits" / "epoch=1.npz").is_file()
