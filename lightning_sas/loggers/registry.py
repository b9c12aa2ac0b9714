"""Which sink writes a logger: one registry line per logger class written in its own form.

Adding a destination is one file with its sink (see :mod:`lightning_sas.loggers.sink`) and
one line in :data:`SINKS`. A logger of no class listed there is written as files under its
directory (:class:`~lightning_sas.loggers.directory.DirectorySink`), or gets the scalars only.
"""

from __future__ import annotations

import sys

from lightning.pytorch import loggers as lightning_loggers
from lightning.pytorch.loggers import Logger

from lightning_sas.loggers.directory import DirectorySink
from lightning_sas.loggers.mlflow import MLflowSink
from lightning_sas.loggers.sink import Sink
from lightning_sas.loggers.tensorboard import TensorBoardSink
from lightning_sas.loggers.wandb import WandbSink

#: The sink of each logger class, by its name in ``lightning.pytorch.loggers`` (tried in this order).
SINKS = {
    "TensorBoardLogger": TensorBoardSink,
    "WandbLogger": WandbSink,
    "MLFlowLogger": MLflowSink,
    "CSVLogger": DirectorySink,
}

#: The logger classes written in their own form, by name in ``lightning.pytorch.loggers``.
NATIVE_LOGGERS = tuple(SINKS)


def is_logger(logger: object, kind: str) -> bool:
    """Whether ``logger`` is a ``kind`` logger (e.g. ``"TensorBoardLogger"``) of either Lightning namespace.

    ``lightning.pytorch.loggers.TensorBoardLogger`` and ``pytorch_lightning.loggers.TensorBoardLogger``
    are separate classes with the same behaviour; published projects use both. The classic
    namespace is looked up only when the user's code already imported it (never imported here).

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> is_logger(CSVLogger("logs"), "CSVLogger"), is_logger(CSVLogger("logs"), "TensorBoardLogger")
        (True, False)
    """
    if kind not in NATIVE_LOGGERS:
        raise ValueError(f"`kind` must be one of {NATIVE_LOGGERS}, got {kind!r}.")
    classes = [getattr(lightning_loggers, kind)]
    classic = sys.modules.get("pytorch_lightning.loggers")
    if classic is not None and hasattr(classic, kind):
        classes.append(getattr(classic, kind))
    return isinstance(logger, tuple(classes))


def sink_for(logger: Logger) -> Sink:
    """The sink that writes ``logger`` in its own form (either Lightning namespace).

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
        >>> type(sink_for(TensorBoardLogger("logs"))).__name__, type(sink_for(CSVLogger("logs"))).__name__
        ('TensorBoardSink', 'DirectorySink')
    """
    adapter = next((adapter for kind, adapter in SINKS.items() if is_logger(logger, kind)), DirectorySink)
    return adapter(logger)
