"""Write an audit where a reviewer looks: TensorBoard (or PNG files), scalars, raw maps.

The tag names are fixed (the dashboard, the CLI and the tests rely on them):
``audit/grid/<method>`` (sorted before the per-probe panels, so TensorBoard shows the
method grids together first), ``audit/probe_<NN>``, ``audit/<method>/roi_share``,
``audit/<method>/roi_mass``, ``audit/<method>/agreement``, ``audit/seconds``.

Every writer tries every logger: one logger that fails does not keep the others from getting
the audit (the failures are raised together afterwards). Loggers without a local directory
get scalars but no files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lightning_sas.audit import AuditResult
from lightning_sas.metrics import spearman
from lightning_sas.probes import Probes, class_label
from lightning_sas.render import method_grid, overlay, probe_panel, save_png, to_display


def probe_label(result: AuditResult, probes: Probes, position: int, class_names: Sequence[str] | None) -> str:
    """``"val[3]  true: malignant  pred: benign (0.93)"`` for one probe."""
    true = class_label(int(probes.labels[position]), class_names)
    predicted = class_label(int(result.predictions[position]), class_names)
    return f"{probes.names[position]}  true: {true}  pred: {predicted} ({float(result.confidences[position]):.2f})"


def render_audit(
    result: AuditResult,
    probes: Probes,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, np.ndarray]:
    """The audit's pictures by tag: one grid per method, one panel per probe (uint8 HWC)."""
    display = to_display(probes.images, mean, std)
    overlays = {name: overlay(display, maps.to(display.device)) for name, maps in result.maps.items()}
    labels = [probe_label(result, probes, i, class_names) for i in range(len(probes))]
    pictures = {
        f"audit/grid/{name}": method_grid(display, method_overlays, labels, title=f"{name} {title}".strip())
        for name, method_overlays in overlays.items()
    }
    for position in range(len(probes)):
        pictures[f"audit/probe_{position:02d}"] = probe_panel(
            display[position],
            {name: method_overlays[position] for name, method_overlays in overlays.items()},
            title=f"{labels[position]} {title}".strip(),
        )
    return pictures


def manifest_markdown(manifest: Sequence[Mapping]) -> str:
    """The probe manifest as a Markdown table (TensorBoard renders it under ``audit/manifest``)."""
    rows = [f"| {e['name']} | {e['index']} | {e['label']} | `{e['sha256'][:16]}` |" for e in manifest]
    return "\n".join(["| probe | index | label | sha256 (prefix) |", "|---|---|---|---|", *rows])


def audit_scalars(result: AuditResult, previous_maps: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Scalars of one audit: ROI scores (when probes have ROIs), drift against the last audit, time."""
    scalars: dict[str, float] = {}
    for method, means in result.mean_scores().items():
        scalars[f"audit/{method}/roi_share"] = means["roi_share"]
        scalars[f"audit/{method}/roi_mass"] = means["roi_mass"]
        if "roi_lift" in means:
            scalars[f"audit/{method}/roi_lift"] = means["roi_lift"]
    for method, maps in result.maps.items():
        previous = (previous_maps or {}).get(method)
        if previous is not None and previous.shape == maps.shape:
            current, previous = maps.float().cpu(), previous.float().cpu()
            # Probes with a NaN map (now or then) have no ordering to compare.
            finite = torch.isfinite(current.flatten(1)).all(1) & torch.isfinite(previous.flatten(1)).all(1)
            if bool(finite.any()):
                agreement = spearman(current[finite], previous[finite])
                if not bool(torch.isnan(agreement).all()):
                    scalars[f"audit/{method}/agreement"] = float(agreement.nanmean())
    for method, means in result.faithfulness_means().items():
        for name, value in means.items():
            scalars[f"audit/{method}/{name}"] = value
    if result.sanity is not None:
        for method, values in result.sanity.similarity.items():
            scalars[f"audit/{method}/sanity_similarity"] = float(values[-1])
    if result.intervention is not None:
        scalars["audit/intervention/flip_rate"] = result.intervention.flip_rate
        scalars["audit/intervention/probability_change"] = result.intervention.mean_probability_change
    scalars["audit/seconds"] = float(result.seconds)
    return scalars


class AuditWriteError(RuntimeError):
    """Some loggers could not take part of the audit; the others got everything."""


def describe_error(error: BaseException) -> str:
    """``"OSError: disk full"``; a write error's message already names its parts."""
    return str(error) if isinstance(error, AuditWriteError) else f"{type(error).__name__}: {error}"


def logger_directory(logger: Logger) -> Path | None:
    """Where a logger keeps its files (its run directory), or ``None`` if it has none.

    Loggers that store runs in a database or on a server (e.g. MLflow with a SQL tracking
    store) have no local directory: they get scalars, but no picture or text files.
    """
    try:
        directory = logger.log_dir or logger.save_dir
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    return None if directory is None else Path(directory)


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


def write_scalars(loggers: Sequence[Logger], scalars: Mapping[str, float], step: int) -> None:
    """Scalars through every logger's ``log_metrics`` (written first: they need no directory)."""

    def write(logger: Logger) -> None:
        logger.log_metrics(dict(scalars), step=step)
        logger.save()

    _each_logger(loggers, write)


def write_pictures(loggers: Sequence[Logger], pictures: Mapping[str, np.ndarray], step: int) -> list[Logger]:
    """Images through TensorBoard loggers; PNG files under other loggers' directories.

    Returns:
        The loggers that were skipped because they have no directory for files.
    """
    skipped: list[Logger] = []

    def write(logger: Logger) -> None:
        if isinstance(logger, TensorBoardLogger):
            for tag, picture in pictures.items():
                logger.experiment.add_image(tag, picture, global_step=step, dataformats="HWC")
            logger.experiment.flush()
            return
        directory = logger_directory(logger)
        if directory is None:
            skipped.append(logger)
            return
        for tag, picture in pictures.items():
            save_png(picture, directory / "audits" / "images" / tag / f"step={step}.png")

    _each_logger(loggers, write)
    return skipped


def write_text(loggers: Sequence[Logger], tag: str, text: str, step: int) -> list[Logger]:
    """Text through TensorBoard loggers; a Markdown file under other loggers' directories.

    Returns:
        The loggers that were skipped because they have no directory for files.
    """
    skipped: list[Logger] = []

    def write(logger: Logger) -> None:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, global_step=step)
            logger.experiment.flush()
            return
        directory = logger_directory(logger)
        if directory is None:
            skipped.append(logger)
            return
        path = directory / "audits" / "text" / f"{tag.replace('/', '_')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"## step {step}\n\n{text}\n\n")

    _each_logger(loggers, write)
    return skipped


def first_directory(loggers: Sequence[Logger]) -> Path | None:
    """The directory of the first logger that has one (where raw maps go), or ``None``."""
    return next((directory for directory in map(logger_directory, loggers) if directory is not None), None)


def save_raw_maps(directory: os.PathLike[str] | str, epoch: int, result: AuditResult, probes: Probes) -> Path:
    """``audits/epoch=<E>.npz`` with every method's maps and the probe identities, for diffing."""
    path = Path(directory) / "audits" / f"epoch={epoch}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"maps_{name}": maps.detach().float().cpu().numpy() for name, maps in result.maps.items()}
    arrays.update(
        names=np.array(probes.names),
        indices=np.array(probes.indices or [-1] * len(probes)),
        labels=probes.labels.cpu().numpy(),
        predictions=result.predictions.cpu().numpy(),
        confidences=result.confidences.cpu().numpy(),
        targets=result.targets.cpu().numpy(),
    )
    np.savez_compressed(path, **arrays)
    return path
