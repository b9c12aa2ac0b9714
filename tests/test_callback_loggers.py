"""Loggers that cannot take files: the audit never kills training, and every logger gets what it can."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from lit_models import LitClassifier, corner_dataset, loaders
from test_callback import make_trainer, read_events

from lightning_sas import SASAuditCallback

mlflow = pytest.importorskip("mlflow")


def test_mlflow_on_a_database_store_beside_tensorboard(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    database = MLFlowLogger(experiment_name="audit", tracking_uri=tracking_uri)
    callback = SASAuditCallback(probe=2, methods=["gradcam"])
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, logger=[tensorboard, database])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitClassifier(), *loaders(corner_dataset()))
    messages = [str(warning.message) for warning in caught if "SASAuditCallback" in str(warning.message)]
    # One warning for the logger without a directory, and nothing reported as a failure.
    assert [m for m in messages if "MLFlowLogger has no local directory" in m] == [messages[0]]
    assert not [m for m in messages if "could not" in m or "failed" in m], messages
    assert trainer.current_epoch == 2 and callback.audited_epochs == [0, 1]

    # TensorBoard got everything: pictures, scalars, the manifest.
    events = read_events(tensorboard.log_dir)
    assert {"audit/grid/gradcam", "audit/probe_00"} <= set(events.Tags()["images"])
    assert [event.step for event in events.Scalars("audit/gradcam/roi_share")] == [3, 6]
    assert "audit/manifest/text_summary" in events.Tags()["tensors"]

    # MLflow got every scalar, read back from the database through its own client.
    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(database.run_id, "audit/gradcam/roi_share")
    assert [metric.step for metric in history] == [3, 6]
    assert [metric.value for metric in history] == [event.value for event in events.Scalars("audit/gradcam/roi_share")]
