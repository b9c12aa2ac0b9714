"""MLflow: stepped images, Markdown artifacts, raw maps as an artifact; any tracking store (database, server).

Everything goes through ``MlflowClient`` (the logger's ``experiment``), never as loose files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lightning_sas.loggers.sink import LoggerSink


def mlflow_text_path(tag: str, step: int) -> str:
    """The artifact path of an MLflow logger's text: ``audit/manifest/step=0.md``."""
    return f"{tag}/step={step}.md"


class MLflowSink(LoggerSink):
    """An ``MLFlowLogger``: every part logged to its run (``logger.run_id``)."""

    has_own_store = True

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """Each picture through ``log_image`` with its tag as key and the step (the run's image charts)."""
        for tag, picture in pictures.items():
            # Synchronous, so a failure is this logger's failure and a reader sees every image.
            self.logger.experiment.log_image(self.logger.run_id, picture, key=tag, step=step, synchronous=True)
        return True

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """The Markdown artifact :func:`mlflow_text_path`."""
        self.logger.experiment.log_text(self.logger.run_id, text, mlflow_text_path(tag, step))
        return True

    def add_raw_maps(self, path: Path, folder: str) -> None:
        """The artifact ``<folder>/<file name>``."""
        self.logger.experiment.log_artifact(self.logger.run_id, str(path), artifact_path=folder)
