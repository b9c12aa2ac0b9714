"""Weights & Biases: captioned images (``wandb.Image``), the manifest as a ``wandb.Table``, text in the summary.

``wandb`` is imported only when such a logger is written to.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger

from lightning_sas.loggers.sink import LoggerSink

#: Columns of the probe manifest as a table (W&B).
MANIFEST_COLUMNS = ("probe", "index", "label", "sha256")


def wandb_log(logger: Logger, values: Mapping[str, Any], step: int) -> None:
    """One ``wandb.log`` call through the logger (its prefix, at ``trainer/global_step``: the
    x-axis WandbLogger defines), as ``WandbLogger.log_image`` and ``log_table`` do."""
    logger.log_metrics(dict(values), step=step)


class WandbSink(LoggerSink):
    """A ``WandbLogger``: media and tables at the step, text as the latest value in the run summary."""

    has_own_store = True
    manifest_as_table = True

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """Every picture as a PNG ``wandb.Image`` with its caption, in one ``wandb.log`` call."""
        import wandb

        images = {
            tag: wandb.Image(picture, caption=captions.get(tag), file_type="png") for tag, picture in pictures.items()
        }
        wandb_log(self.logger, images, step)
        return True

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """The run summary's ``tag`` (the latest text)."""
        self.logger.experiment.summary[tag] = text
        return True

    def add_manifest(self, manifest: Sequence[Mapping], markdown: str, step: int, tag: str) -> bool:
        """A ``wandb.Table`` under ``tag``, and the Markdown table as the summary's ``<tag>_markdown``."""
        import wandb

        rows = [[entry["name"], entry["index"], str(entry["label"]), entry["sha256"]] for entry in manifest]
        wandb_log(self.logger, {tag: wandb.Table(columns=list(MANIFEST_COLUMNS), data=rows)}, step)
        self.logger.experiment.summary[f"{tag}_markdown"] = markdown
        return True

    def add_raw_maps(self, path: Path, folder: str) -> None:
        """A copy in the run directory under ``folder``: its files are the run's (uploaded when it syncs)."""
        destination = Path(self.logger.experiment.dir) / folder / path.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
