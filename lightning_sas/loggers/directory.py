"""Loggers written as files under their directory: ``CSVLogger`` and any logger without an image API.

Pictures are PNG files ``audits/images/<tag>/step=<S>.png``, text is ``audits/text/<tag>.md``
(appended, one section per step). A logger without a directory gets the scalars only: its
pictures and text are skipped (and reported so).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger

from lightning_sas.loggers.sink import LoggerSink
from lightning_sas.report.render import save_png


def logger_directory(logger: Logger) -> Path | None:
    """Where a logger keeps its files (its run directory), or ``None`` if it has none.

    Loggers that store runs in a database or on a server (e.g. MLflow with a SQL tracking
    store) have no local directory. W&B and MLflow loggers are written through their own
    APIs instead (their sinks have no directory), never as loose files.
    """
    try:
        directory = logger.log_dir or logger.save_dir
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    return None if directory is None else Path(directory)


class DirectorySink(LoggerSink):
    """Files under the logger's directory; nothing (skipped) when it has none."""

    def directory(self) -> Path | None:
        """The logger's directory (:func:`logger_directory`)."""
        return logger_directory(self.logger)

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """PNG files ``audits/images/<tag>/step=<S>.png``."""
        directory = self.directory()
        if directory is None:
            return False
        for tag, picture in pictures.items():
            save_png(picture, directory / "audits" / "images" / tag / f"step={step}.png")
        return True

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """A section ``## step <S>`` appended to ``audits/text/<tag>.md`` (``/`` in the tag as ``_``)."""
        directory = self.directory()
        if directory is None:
            return False
        path = directory / "audits" / "text" / f"{tag.replace('/', '_')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"## step {step}\n\n{text}\n\n")
        return True
