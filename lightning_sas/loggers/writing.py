"""Write an audit where a reviewer looks, in each logger's own form.

The tag names are fixed (the dashboard, the CLI and the tests rely on them):
``audit/grid/<method>`` (sorted before the per-probe panels, so TensorBoard shows the
method grids together first), ``audit/probe_<NN>``, ``audit/<method>/roi_share``,
``audit/<method>/roi_mass``, ``audit/<method>/agreement``, ``audit/seconds``.

What each logger gets (scalars always through ``log_metrics``, at ``trainer.global_step``):

- :class:`~lightning.pytorch.loggers.TensorBoardLogger`: images (``add_image``), text
  (``add_text``) and a custom-scalars layout with one chart per score and every method on it.
- :class:`~lightning.pytorch.loggers.WandbLogger`: images as ``wandb.Image`` with a caption
  (probe, true / predicted class, confidence), the manifest as a ``wandb.Table``, text (alerts,
  problems, cost, sanity) in the run summary, raw maps as a run file.
- :class:`~lightning.pytorch.loggers.MLFlowLogger`: images through ``MlflowClient.log_image``
  (stepped images), text as Markdown artifacts ``audit/<name>/step=<S>.md``, raw maps as
  the artifact ``audits/epoch=<E>.npz``; any tracking store, a database or a server included.
- Any other logger (e.g. ``CSVLogger``): PNG and Markdown files under its directory; a logger
  without a directory gets the scalars only.

Each logger is written through its sink (:func:`~lightning_sas.loggers.registry.sink_for`);
what is written comes from :mod:`lightning_sas.loggers.content`. ``wandb`` and ``mlflow`` are
imported only when such a logger is in use. Every writer tries every logger: one logger that
fails does not keep the others from getting the audit (the failures are raised together afterwards).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger

from lightning_sas.audit.run import AuditResult
from lightning_sas.loggers.content import (
    manifest_markdown,
    save_raw_maps,
)
from lightning_sas.loggers.registry import sink_for
from lightning_sas.probes.probe_set import Probes

__all__ = [
    "AuditWriteError",
    "describe_error",
    "first_directory",
    "write_layout",
    "write_manifest",
    "write_pictures",
    "write_raw_maps",
    "write_scalars",
    "write_text",
]


class AuditWriteError(RuntimeError):
    """Some loggers could not take part of the audit; the others got everything."""


def describe_error(error: BaseException) -> str:
    """``"OSError: disk full"``; a write error's message already names its parts."""
    return str(error) if isinstance(error, AuditWriteError) else f"{type(error).__name__}: {error}"


def _each_logger(loggers: Sequence[Logger], write: Callable[[Logger], None]) -> None:
    """Run ``write`` for every logger; one logger's failure does not keep the others from writing.

    Raises:
        AuditWriteError: After all loggers were tried, naming each one that failed and why.
    """
    failures = []
    for logger in loggers:
        try:
            write(logger)
        except Exception as error:  # noqa: BLE001 - report every logger's failure, after the others wrote
            failures.append(f"{type(logger).__name__}: {describe_error(error)}")
    if failures:
        raise AuditWriteError("; ".join(failures))


def _each_sink(loggers: Sequence[Logger], write: Callable[[Logger], bool]) -> list[Logger]:
    """:func:`_each_logger` for a part a logger may have nowhere to put (``write`` returns ``False``).

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After all loggers were tried, naming each one that failed and why.
    """
    skipped: list[Logger] = []

    def write_or_skip(logger: Logger) -> None:
        if not write(logger):
            skipped.append(logger)

    _each_logger(loggers, write_or_skip)
    return skipped


def write_scalars(loggers: Sequence[Logger], scalars: Mapping[str, float], step: int) -> None:
    """Scalars through every logger's ``log_metrics`` (written first: they need no directory)."""

    def write(logger: Logger) -> None:
        logger.log_metrics(dict(scalars), step=step)
        logger.save()

    _each_logger(loggers, write)


def write_pictures(
    loggers: Sequence[Logger],
    pictures: Mapping[str, np.ndarray],
    step: int,
    captions: Mapping[str, str] | None = None,
) -> list[Logger]:
    """Every picture to every logger, in its own form (see the module docstring).

    Args:
        loggers: The loggers.
        pictures: Tag -> uint8 ``[H, W, 3]`` picture (from :func:`render_audit`).
        step: The step to log them at (``trainer.global_step``).
        captions: Tag -> caption, for loggers that show one (W&B; from :func:`audit_captions`).

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    captions = captions or {}
    return _each_sink(loggers, lambda logger: sink_for(logger).add_pictures(pictures, step, captions))


def write_text(loggers: Sequence[Logger], tag: str, text: str, step: int) -> list[Logger]:
    """Markdown ``text`` to every logger, in its own form (see the module docstring).

    TensorBoard: ``add_text``; W&B: the run summary's ``tag`` (the latest text); MLflow: the
    artifact :func:`~lightning_sas.loggers.mlflow.mlflow_text_path`; other loggers:
    ``audits/text/<tag>.md`` under their directory (appended, one section per step).

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    return _each_sink(loggers, lambda logger: sink_for(logger).add_text(tag, text, step))


def write_manifest(
    loggers: Sequence[Logger], manifest: Sequence[Mapping], step: int, tag: str = "audit/manifest"
) -> list[Logger]:
    """The probe manifest under ``audit/manifest``: a ``wandb.Table`` for W&B (and the Markdown
    table in its summary), the Markdown table (:func:`manifest_markdown`) for every other logger.

    The loggers that take it as text are written first, then those that take it as a table.

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    markdown = manifest_markdown(manifest)
    text_first = sorted(loggers, key=lambda logger: sink_for(logger).manifest_as_table)
    return _each_sink(text_first, lambda logger: sink_for(logger).add_manifest(manifest, markdown, step, tag))


def write_layout(loggers: Sequence[Logger], layout: Mapping[str, Mapping[str, list]]) -> None:
    """The custom-scalars ``layout`` to every TensorBoard logger (others have no such thing).

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    _each_logger(loggers, lambda logger: sink_for(logger).add_layout(layout))


def first_directory(loggers: Sequence[Logger]) -> Path | None:
    """The local directory of the first logger that has one (where raw maps go), or ``None``."""
    directories = (sink_for(logger).directory() for logger in loggers)
    return next((directory for directory in directories if directory is not None), None)


def write_raw_maps(
    loggers: Sequence[Logger], epoch: int, result: AuditResult, probes: Probes, folder: str = "audits"
) -> None:
    """Raw maps (:func:`~lightning_sas.loggers.content.save_raw_maps`) once per run store: under the
    first logger directory, as the artifact ``audits/epoch=<E>.npz`` of every MLflow run, and as a
    file of every W&B run.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    directory = first_directory(loggers)
    own_stores = [logger for logger in loggers if sink_for(logger).has_own_store]
    if directory is not None:
        save_raw_maps(directory, epoch, result, probes, folder)
    if not own_stores:
        return
    with tempfile.TemporaryDirectory(prefix="lightning_sas_") as scratch:
        path = save_raw_maps(scratch, epoch, result, probes, folder)
        _each_logger(own_stores, lambda logger: sink_for(logger).add_raw_maps(path, folder))
