"""The one protocol every destination of an audit follows: a :class:`Sink` wraps one logger.

Scalars are no part of it: every logger takes them through its own ``log_metrics``
(:func:`~lightning_sas.loggers.writing.write_scalars`). The rest goes through a sink, which
writes it in the logger's own form (``lightning_sas.loggers.tensorboard``, ``.wandb``,
``.mlflow``, ``.directory``); :func:`~lightning_sas.loggers.registry.sink_for` picks it.

A method that returns ``False`` had nowhere to put its part (a logger without a directory):
the writer reports that logger as skipped. A failure is raised; the writer collects them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from lightning.pytorch.loggers import Logger


class Sink(Protocol):
    """One logger, as a place an audit is written to in that logger's own form."""

    #: The logger written to.
    logger: Logger
    #: Whether the logger keeps the run's files in its own store (W&B, MLflow), not in a local directory.
    has_own_store: bool
    #: Whether the manifest goes in as a table (written after the loggers that take it as text).
    manifest_as_table: bool

    def directory(self) -> Path | None:
        """The local directory the logger keeps its files in, or ``None`` (none, or its own store)."""
        ...

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """Every picture (tag -> uint8 ``[H, W, 3]``) at ``step``; ``False`` if there is nowhere to put them."""
        ...

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """Markdown ``text`` under ``tag`` at ``step``; ``False`` if there is nowhere to put it."""
        ...

    def add_manifest(self, manifest: Sequence[Mapping], markdown: str, step: int, tag: str) -> bool:
        """The probe manifest (its entries and their Markdown table); ``False`` if there is nowhere to put it."""
        ...

    def add_layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """A custom-scalars layout (a no-op for loggers that have no such thing)."""
        ...

    def add_raw_maps(self, path: Path, folder: str) -> None:
        """The saved raw maps file ``path`` as the run's file under ``folder`` (loggers with their own store)."""
        ...


class LoggerSink:
    """What a sink does unless it says otherwise: the manifest as text, no layout, no store of its own.

    Args:
        logger: The logger to write to.
    """

    has_own_store = False
    manifest_as_table = False

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def directory(self) -> Path | None:
        """No local directory unless the sink has one."""
        return None

    def add_pictures(self, pictures: Mapping[str, np.ndarray], step: int, captions: Mapping[str, str]) -> bool:
        """Every sink writes pictures in its own way."""
        raise NotImplementedError

    def add_text(self, tag: str, text: str, step: int) -> bool:
        """Every sink writes text in its own way."""
        raise NotImplementedError

    def add_manifest(self, manifest: Sequence[Mapping], markdown: str, step: int, tag: str) -> bool:
        """The manifest's Markdown table as text under ``tag``."""
        return self.add_text(tag, markdown, step)

    def add_layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """Most loggers have no custom-scalars layout: nothing to write."""

    def add_raw_maps(self, path: Path, folder: str) -> None:
        """Raw maps of a logger without a store of its own go under the first local directory, once."""
