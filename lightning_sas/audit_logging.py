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

``wandb`` and ``mlflow`` are imported only when such a logger is in use. Every writer tries
every logger: one logger that fails does not keep the others from getting the audit (the
failures are raised together afterwards).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import loggers as lightning_loggers
from lightning.pytorch.loggers import Logger, WandbLogger
from torch import Tensor

from lightning_sas.audit import AuditResult
from lightning_sas.metrics import spearman
from lightning_sas.probes import Probes, class_label
from lightning_sas.render import method_grid, overlay, probe_panel, save_png, to_display


def probe_label(result: AuditResult, probes: Probes, position: int, class_names: Sequence[str] | None) -> str:
    """``"val[3]  true: malignant  pred: benign (0.93)"`` for one probe."""
    true = class_label(int(probes.labels[position]), class_names)
    predicted = class_label(int(result.predictions[position]), class_names)
    return f"{probes.names[position]}  true: {true}  pred: {predicted} ({float(result.confidences[position]):.2f})"


def probe_scores(result: AuditResult) -> dict[str, dict[str, Tensor]]:
    """Per method, the per-probe scores shown under its tiles: ``roi_share`` (when probes have
    ROIs) and ``faithfulness`` (insertion minus deletion AUC, when measured), ``[N]`` each."""
    scores: dict[str, dict[str, Tensor]] = {}
    for method in result.maps:
        shown: dict[str, Tensor] = {}
        share = result.roi_share.get(method)
        if share is not None and not bool(torch.isnan(share).all()):
            shown["roi_share"] = share.detach().float().cpu()
        curves = result.faithfulness.get(method)
        if curves is not None:
            shown["faithfulness"] = (curves.insertion_auc - curves.deletion_auc).detach().float().cpu()
        scores[method] = shown
    return scores


def render_audit(
    result: AuditResult,
    probes: Probes,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, np.ndarray]:
    """The audit's pictures by tag: one grid per method, one panel per probe (uint8 HWC).

    Each overlay carries its probe's scores (:func:`probe_scores`) under it.
    """
    display = to_display(probes.images, mean, std)
    overlays = {name: overlay(display, maps.to(display.device)) for name, maps in result.maps.items()}
    labels = [probe_label(result, probes, i, class_names) for i in range(len(probes))]
    scores = probe_scores(result)
    pictures = {
        f"audit/grid/{name}": method_grid(
            display, method_overlays, labels, title=f"{name} {title}".strip(), scores=scores[name]
        )
        for name, method_overlays in overlays.items()
    }
    for position in range(len(probes)):
        pictures[f"audit/probe_{position:02d}"] = probe_panel(
            display[position],
            {name: method_overlays[position] for name, method_overlays in overlays.items()},
            title=f"{labels[position]} {title}".strip(),
            scores={
                name: {score: float(values[position]) for score, values in method_scores.items()}
                for name, method_scores in scores.items()
            },
        )
    return pictures


def audit_captions(
    result: AuditResult, probes: Probes, class_names: Sequence[str] | None = None, title: str = ""
) -> dict[str, str]:
    """A caption per picture tag, for loggers that show one (W&B): the probe with its true and
    predicted class and the confidence; for a grid, the method and its probes' labels."""
    labels = [probe_label(result, probes, i, class_names) for i in range(len(probes))]
    captions = {f"audit/grid/{name}": f"{name} {title}".strip() + ": " + "; ".join(labels) for name in result.maps}
    captions.update(
        {f"audit/probe_{position:02d}": f"{label} {title}".strip() for position, label in enumerate(labels)}
    )
    return captions


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
        for name in ("roi_lift", "roi_enrichment"):
            if name in means and math.isfinite(means[name]):
                scalars[f"audit/{method}/{name}"] = means[name]
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


#: The logger classes written in their own form, by name in ``lightning.pytorch.loggers``.
NATIVE_LOGGERS = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CSVLogger")


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


def _is_native_store(logger: object) -> bool:
    """W&B and MLflow: written through their own APIs, never as loose files."""
    return is_logger(logger, "WandbLogger") or is_logger(logger, "MLFlowLogger")


def logger_directory(logger: Logger) -> Path | None:
    """Where a logger keeps its files (its run directory), or ``None`` if it has none.

    Loggers that store runs in a database or on a server (e.g. MLflow with a SQL tracking
    store) have no local directory. W&B and MLflow loggers are written through their own
    APIs instead (:func:`write_pictures`), never as loose files.
    """
    if _is_native_store(logger):
        return None
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


def _wandb_log(logger: WandbLogger, values: Mapping[str, Any], step: int) -> None:
    """One ``wandb.log`` call through the logger (its prefix, at ``trainer/global_step``: the
    x-axis WandbLogger defines), as ``WandbLogger.log_image`` and ``log_table`` do."""
    logger.log_metrics(dict(values), step=step)


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
    skipped: list[Logger] = []
    captions = captions or {}

    def write(logger: Logger) -> None:
        if is_logger(logger, "TensorBoardLogger"):
            for tag, picture in pictures.items():
                logger.experiment.add_image(tag, picture, global_step=step, dataformats="HWC")
            logger.experiment.flush()
            return
        if is_logger(logger, "WandbLogger"):
            import wandb

            _wandb_log(
                logger,
                {
                    tag: wandb.Image(picture, caption=captions.get(tag), file_type="png")
                    for tag, picture in pictures.items()
                },
                step,
            )
            return
        if is_logger(logger, "MLFlowLogger"):
            for tag, picture in pictures.items():
                # Synchronous, so a failure is this logger's failure and a reader sees every image.
                logger.experiment.log_image(logger.run_id, picture, key=tag, step=step, synchronous=True)
            return
        directory = logger_directory(logger)
        if directory is None:
            skipped.append(logger)
            return
        for tag, picture in pictures.items():
            save_png(picture, directory / "audits" / "images" / tag / f"step={step}.png")

    _each_logger(loggers, write)
    return skipped


def mlflow_text_path(tag: str, step: int) -> str:
    """The artifact path of an MLflow logger's text: ``audit/manifest/step=0.md``."""
    return f"{tag}/step={step}.md"


def write_text(loggers: Sequence[Logger], tag: str, text: str, step: int) -> list[Logger]:
    """Markdown ``text`` to every logger, in its own form (see the module docstring).

    TensorBoard: ``add_text``; W&B: the run summary's ``tag`` (the latest text); MLflow: the
    artifact :func:`mlflow_text_path`; other loggers: ``audits/text/<tag>.md`` under their
    directory (appended, one section per step).

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    skipped: list[Logger] = []

    def write(logger: Logger) -> None:
        if is_logger(logger, "TensorBoardLogger"):
            logger.experiment.add_text(tag, text, global_step=step)
            logger.experiment.flush()
            return
        if is_logger(logger, "WandbLogger"):
            logger.experiment.summary[tag] = text
            return
        if is_logger(logger, "MLFlowLogger"):
            logger.experiment.log_text(logger.run_id, text, mlflow_text_path(tag, step))
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


#: Columns of the probe manifest as a table (W&B).
MANIFEST_COLUMNS = ("probe", "index", "label", "sha256")


def write_manifest(
    loggers: Sequence[Logger], manifest: Sequence[Mapping], step: int, tag: str = "audit/manifest"
) -> list[Logger]:
    """The probe manifest under ``audit/manifest``: a ``wandb.Table`` for W&B (and the Markdown
    table in its summary), the Markdown table (:func:`manifest_markdown`) for every other logger.

    Returns:
        The loggers that were skipped because they have no directory for files.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    text = manifest_markdown(manifest)
    others = [logger for logger in loggers if not is_logger(logger, "WandbLogger")]
    failures: list[str] = []
    skipped: list[Logger] = []
    try:
        skipped = write_text(others, tag, text, step)
    except AuditWriteError as error:
        failures.append(str(error))

    def write(logger: Logger) -> None:
        import wandb

        rows = [[entry["name"], entry["index"], str(entry["label"]), entry["sha256"]] for entry in manifest]
        _wandb_log(logger, {tag: wandb.Table(columns=list(MANIFEST_COLUMNS), data=rows)}, step)
        logger.experiment.summary[f"{tag}_markdown"] = text

    try:
        _each_logger([logger for logger in loggers if is_logger(logger, "WandbLogger")], write)
    except AuditWriteError as error:
        failures.append(str(error))
    if failures:
        raise AuditWriteError("; ".join(failures))
    return skipped


#: Scores that get a chart of their own in TensorBoard's custom-scalars layout, every method on it.
_METHOD_CHARTS = {
    "roi": ("roi_enrichment", "roi_share", "roi_lift", "roi_mass"),
    "faithfulness": ("insertion_minus_deletion", "deletion_auc", "insertion_auc"),
    "drift": ("agreement",),
}


def scalar_layout(
    methods: Sequence[str], *, roi: bool = True, faithfulness: bool = True, intervention: bool = False
) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalars layout: one chart per score with every method on it.

    Charts hold ``roi_enrichment``, ``roi_share``, ``roi_lift``, ``roi_mass`` (with ``roi``), the faithfulness
    scores (with ``faithfulness``), ``agreement`` (drift), and the intervention's
    ``flip_rate`` and ``probability_change`` (with ``intervention``). Tags are exact
    (escaped, anchored regular expressions, which is what the plugin matches).

    Example:
        >>> scalar_layout(["sas", "gradcam"], faithfulness=False)["audit: methods side by side"]["roi_share"]
        ['Multiline', ['^audit/sas/roi_share$', '^audit/gradcam/roi_share$']]
    """
    wanted = {"roi": roi, "faithfulness": faithfulness, "drift": True}
    charts: dict[str, list] = {}
    for group, scores in _METHOD_CHARTS.items():
        if wanted[group]:
            for score in scores:
                charts[score] = ["Multiline", [f"^{re.escape(f'audit/{method}/{score}')}$" for method in methods]]
    if intervention:
        tags = ("audit/intervention/flip_rate", "audit/intervention/probability_change")
        charts["intervention"] = ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]
    return {"audit: methods side by side": charts}


def retag(tag: str, name: str) -> str:
    """``tag`` under the audit named ``name``: ``audit/sas/roi_share`` -> ``<name>/sas/roi_share``.

    Example:
        >>> retag("audit/sas/roi_share", "audit_fast"), retag("audit/sas/roi_share", "audit")
        ('audit_fast/sas/roi_share', 'audit/sas/roi_share')
    """
    return f"{name}/{tag.removeprefix('audit/')}" if tag.startswith("audit/") else tag


def retag_layout(layout: Mapping[str, Mapping[str, list]], name: str) -> dict[str, dict[str, list]]:
    """A :func:`scalar_layout` for the audit named ``name`` (its group title and tag patterns)."""
    if name == "audit":
        return {group: dict(charts) for group, charts in layout.items()}
    prefix = f"^{re.escape(name)}/"
    return {
        group.replace("audit", name, 1): {
            chart: [kind, [pattern.replace("^audit/", prefix, 1) for pattern in patterns]]
            for chart, (kind, patterns) in charts.items()
        }
        for group, charts in layout.items()
    }


def write_layout(loggers: Sequence[Logger], layout: Mapping[str, Mapping[str, list]]) -> None:
    """The custom-scalars ``layout`` to every TensorBoard logger (others have no such thing).

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """

    def write(logger: Logger) -> None:
        if is_logger(logger, "TensorBoardLogger"):
            logger.experiment.add_custom_scalars(dict(layout))
            logger.experiment.flush()

    _each_logger(loggers, write)


def first_directory(loggers: Sequence[Logger]) -> Path | None:
    """The directory of the first logger that has one (where raw maps go), or ``None``."""
    return next((directory for directory in map(logger_directory, loggers) if directory is not None), None)


def save_raw_maps(
    directory: os.PathLike[str] | str, epoch: int, result: AuditResult, probes: Probes, folder: str = "audits"
) -> Path:
    """``<folder>/epoch=<E>.npz`` with every method's maps and the probe identities, for diffing."""
    path = Path(directory) / folder / f"epoch={epoch}.npz"
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


def write_raw_maps(
    loggers: Sequence[Logger], epoch: int, result: AuditResult, probes: Probes, folder: str = "audits"
) -> None:
    """Raw maps (:func:`save_raw_maps`) once per run store: under the first logger directory,
    as the artifact ``audits/epoch=<E>.npz`` of every MLflow run, and as a file of every W&B run.

    Raises:
        AuditWriteError: After every logger was tried, if some failed.
    """
    directory = first_directory(loggers)
    native = [logger for logger in loggers if _is_native_store(logger)]
    if directory is not None:
        save_raw_maps(directory, epoch, result, probes, folder)
    if not native:
        return
    with tempfile.TemporaryDirectory(prefix="lightning_sas_") as scratch:
        path = save_raw_maps(scratch, epoch, result, probes, folder)

        def write(logger: Logger) -> None:
            if is_logger(logger, "MLFlowLogger"):
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
            else:
                # Files in the run directory are the run's files (uploaded when the run syncs).
                destination = Path(logger.experiment.dir) / folder / path.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)

        _each_logger(native, write)
