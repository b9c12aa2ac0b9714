"""TensorBoard: images (``add_image``), text (``add_text``) and a custom-scalars layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lightning_sas.loggers.directory import logger_directory
from lightning_sas.loggers.sink import LoggerSink


class TensorBoardSink(LoggerSink):
    """A ``TensorBoardLogger``: every part flushed at once, so a running TensorBoard shows it."""

    def directory(self) -> Path | None:
        """The log directory (raw maps go there when it is the first logger's)."""
        return logger_directory(self.logger)

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """Each picture through ``add_image`` (the IMAGES tab)."""
        for tag, picture in pictures.items():
            self.logger.experiment.add_image(tag, picture, global_step=step, dataformats="HWC")
        self.logger.experiment.flush()
        return True

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """``add_text`` (the TEXT tab renders the Markdown)."""
        self.logger.experiment.add_text(tag, text, global_step=step)
        self.logger.experiment.flush()
        return True

    def add_layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """``add_custom_scalars`` (the CUSTOM SCALARS tab)."""
        self.logger.experiment.add_custom_scalars(dict(layout))
        self.logger.experiment.flush()
