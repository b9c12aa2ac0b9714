"""What an audit shows while and after it runs: the cost line and progress bar, TensorBoard, stdout.

:data:`PROGRESS_DELAY` is read when a bar starts (tests set it to 0).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.errors import PROGRAM, one_line

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lightning_sas.probes.probe_set import Probes
    from lightning_sas.runtime.outputs import OutputSelector
    from lightning_sas.trust.discovery import Candidate

__all__ = [
    "PROGRESS_DELAY",
    "estimate_line",
    "exit_status",
    "incomplete_parts",
    "print_exit_reason",
    "print_summary",
    "progress_bar",
    "tensorboard_texts",
    "write_candidates",
    "write_tensorboard",
]

#: Seconds an audit runs before its progress bar appears (on a terminal): short audits show none.
PROGRESS_DELAY = 3.0


@contextmanager
def progress_bar(total: int) -> Iterator[Any]:
    """A tqdm bar on stderr counting model passes, shown when stderr is a terminal (not under cron)
    and only once the audit has run :data:`PROGRESS_DELAY` seconds."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        unit="pass",
        unit_scale=True,
        leave=False,
        delay=PROGRESS_DELAY,
        desc="auditing",
    )
    try:
        yield bar
    finally:
        bar.close()


def _duration(seconds: float) -> str:
    """A rough duration for people.

    Example:
        >>> _duration(0.2), _duration(42.4), _duration(300), _duration(9000)
        ('under 1 s', '42 s', '5.0 min', '2.5 h')
    """
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(
    model: torch.nn.Module,
    images: torch.Tensor,
    passes: Mapping[str, tuple[int, bool]],
    output: OutputSelector = None,
) -> str | None:
    """The stderr line that announces the audit's cost, or ``None`` if one pass cannot be timed.

    One forward (and one forward + backward) of the model on the probes is timed and scaled to
    ``passes`` (from :func:`lightning_sas.audit.cost.audit_passes`).
    """
    from lightning_sas.audit.cost import estimate_audit

    try:
        cost = estimate_audit(model, images, dict(passes), output)
    except Exception:  # noqa: BLE001 - only a courtesy: the audit's own steps report real problems
        return None
    total = sum(count for count, _ in passes.values())
    parts = ", ".join(f"{name} {count:,}" for name, (count, _) in passes.items())
    line = (
        f"{PROGRAM}: estimated audit time {_duration(cost.seconds)} on {cost.device} ({total:,} model passes: {parts})"
    )
    if cost.seconds > 600:
        line += "; --sas-iterations, fewer probes, --no-faithfulness or a GPU shorten it"
    return line


def write_tensorboard(
    out: Path,
    pictures: dict[str, np.ndarray],
    scalars: dict[str, float],
    texts: dict[str, str],
    layout: Mapping[str, Mapping[str, list]],
) -> None:
    """TensorBoard events in ``out``: the callback's tags and chart layout at step 0, flushed and closed."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sas.loggers.writing import write_layout, write_pictures, write_text

    logger = TensorBoardLogger(save_dir=str(out), name="", version="", default_hp_metric=False)
    try:
        write_layout([logger], layout)
        write_pictures([logger], pictures, step=0)
        for tag, text in texts.items():
            write_text([logger], tag, text, step=0)
        logger.log_metrics(scalars, step=0)
    finally:
        logger.experiment.flush()
        logger.experiment.close()


def _sanity_warning(summary: Mapping[str, Any]) -> str | None:
    sanity = summary.get("sanity")
    if not sanity or not sanity["flagged"]:
        return None
    finals = ", ".join(f"{name} {sanity['similarity'][name][-1]:.2f}" for name in sanity["flagged"])
    return (
        f"the maps of {', '.join(sanity['flagged'])} do not depend on the model's weights: with every "
        f"parameter randomised they stay similar to the trained model's maps (Spearman {finals} > "
        f"{sanity['threshold']:g}); they explain the image, not the model"
    )


def write_candidates(
    out: Path, probes: Probes, exports: Sequence[tuple[str, Candidate]], mean: Any = None, std: Any = None
) -> None:
    """Each confirmed discovery candidate as an ``--artifacts`` folder ``out/<folder>``: its source
    probes, de-normalised, with the region as the mask (a reviewer can promote one to a known artifact)."""
    from lightning_sas.probes.export_artifacts import export_artifacts

    for folder, candidate in exports:
        images = probes.images[candidate.sources].detach().cpu()
        names = [f"probe_{source:03d}" for source in candidate.sources]
        export_artifacts(images, candidate.masks, out / folder, names=names, mean=mean, std=std)


def tensorboard_texts(summary: dict[str, Any], problems: Sequence[str]) -> dict[str, str]:
    """The callback's text tags: ``audit/manifest`` always (class names, not indices),
    ``audit/alert`` when the alert rule fired, the audit has problems or the sanity check flags;
    ``audit/gradcam/layer``, the layer Grad-CAM explained."""
    from lightning_sas.loggers.content import manifest_markdown
    from lightning_sas.probes.probe_set import class_label
    from lightning_sas.report.verdict import verdict_text

    class_names = summary.get("class_names")
    manifest = [{**item, "label": class_label(item["label"], class_names)} for item in summary["manifest"]]
    texts = {"audit/manifest": manifest_markdown(manifest)}
    # The layer a method explained (Grad-CAM's, given or automatic) under audit/<method>/layer.
    texts.update({f"audit/{name}/layer": info["layer"] for name, info in summary["methods"].items() if "layer" in info})
    alerts = [verdict_text(summary)] if summary["verdict"]["alert"] else []
    alerts += list(problems)
    warning = _sanity_warning(summary)
    if warning:
        alerts.append(f"sanity check: {warning}")
    if alerts:
        texts["audit/alert"] = "\n\n".join(alerts)
    return texts


def _unchecked_methods(summary: dict[str, Any]) -> list[str]:
    """Methods with no finite score on any probe with a mask (so their ROI criteria could not be checked)."""
    return [
        name for name, means in summary["methods"].items() if means["probes_with_mask"] and means["roi_share"] is None
    ]


def incomplete_parts(summary: dict[str, Any]) -> list[str]:
    """What makes the audit incomplete (exit status 2), one phrase each."""
    from lightning_sas.report.summary import AUDIT_PARTS

    failed = []
    for name, message in summary["errors"].items():
        if name == "sanity":
            failed.append(f"the sanity check failed ({one_line(message)})")
        elif name == "intervention":
            failed.append(f"the intervention could not be measured ({one_line(message)})")
        elif name in AUDIT_PARTS:
            failed.append(f"{name} could not be scored ({one_line(message)})")
        else:
            failed.append(f"{name} failed ({one_line(message)})")
    failed += [f"{name} has no finite score on any probe with a mask" for name in _unchecked_methods(summary)]
    return failed


def _format_number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_summary(summary: dict[str, Any], issues: Sequence[str], out: Path) -> None:
    """The audit on stdout: probes and methods, per-method scores, intervention, sanity, problems, verdict."""
    from lightning_sas.report.summary import method_errors
    from lightning_sas.report.verdict import verdict_text

    methods = [*summary["methods"], *method_errors(summary)]
    print(
        f"{PROGRAM}: audited {len(summary['probes'])} probe(s) with {', '.join(methods)} "
        f"in {summary['seconds']:.1f} s ({len(summary['skipped'])} skipped)"
    )
    for item in summary["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    for name, means in summary["methods"].items():
        print(_method_line(name, means))
    _print_trust_checks(summary)
    for issue in issues:
        print(f"  problem: {issue}")
    baseline = summary.get("baseline")
    if baseline:
        print(
            f"  against {baseline['file']}: {len(baseline['flagged_probes'])} probe(s) flagged, "
            f"methods with a changed mean: {', '.join(baseline['flagged_methods']) or 'none'}"
        )
    print(f"{PROGRAM}: {verdict_text(summary)}")
    print(f"report: {out / 'report.html'}")


def _method_line(name: str, means: Mapping[str, Any]) -> str:
    """One method's mean scores, as ``print_summary`` shows them."""
    scored = (
        f", {means['probes_scored']} scored"
        if means.get("probes_scored", means["probes_with_mask"]) != means["probes_with_mask"]
        else ""
    )
    faithfulness = ""
    if "deletion_auc" in means:
        faithfulness = (
            f"; deletion AUC {_format_number(means['deletion_auc'])}, "
            f"insertion AUC {_format_number(means['insertion_auc'])}"
        )
    return (
        f"  {name}: roi_enrichment {_format_number(means.get('roi_enrichment'))}, "
        f"mean roi_share {_format_number(means['roi_share'])} "
        f"(lift {_format_number(means.get('roi_lift'), 2)}x chance), "
        f"roi_mass {_format_number(means['roi_mass'])} "
        f"({means['probes_with_mask']} probe(s) with a mask{scored}){faithfulness}"
    )


def _print_trust_checks(summary: Mapping[str, Any]) -> None:
    """The intervention's and the sanity check's lines of ``print_summary`` (when they ran)."""
    intervention = summary.get("intervention")
    if intervention:
        change = intervention["mean_probability_change"]
        change = "–" if change is None else f"{change:+.3f}"
        print(
            f"  intervention: pasting {intervention['folder']} ({len(intervention['files'])} file(s), "
            f"{intervention['trials']} paste(s) per probe) onto {intervention['eligible_probes']} probe(s) not "
            f"predicted as {intervention['target_class_name']}: flip rate "
            f"{_format_number(intervention['flip_rate'])}, mean probability change {change}"
        )
    sanity = summary.get("sanity")
    if sanity:
        similarities = "; ".join(
            f"{name} {' → '.join(_format_number(value, 2) for value in values)}"
            for name, values in sanity["similarity"].items()
        )
        print(f"  sanity check ({len(sanity['stages'])} stage(s), similarity to the trained maps): {similarities}")
        warning = _sanity_warning(summary)
        if warning:
            print(f"  warning: {warning}")


def exit_status(summary: Mapping[str, Any]) -> int:
    """1 when the alert rule fired, 2 for an incomplete audit or a verdict that cannot tell, else 0.

    A criterion that fired is never hidden by a part that failed.
    """
    from lightning_sas.cli.errors import EXIT_ERROR, EXIT_OK, EXIT_SHORTCUT

    verdict = summary["verdict"]
    if verdict["alert"]:
        return EXIT_SHORTCUT
    if verdict["status"] == "cannot tell" and verdict["not_checkable"]:
        return EXIT_ERROR
    return EXIT_ERROR if incomplete_parts(dict(summary)) else EXIT_OK


def print_exit_reason(summary: Mapping[str, Any], out: Path) -> None:
    """Why the audit did not exit 0 or 1, on stderr: its incomplete parts, or a verdict that cannot tell."""
    verdict = summary["verdict"]
    incomplete = incomplete_parts(dict(summary))
    if incomplete:
        print(
            f"{PROGRAM}: {'warning' if verdict['alert'] else 'error'}: the audit is incomplete: "
            f"{'; '.join(incomplete)}; {out / 'summary.json'} and {out / 'report.html'} list it.",
            file=sys.stderr,
        )
    if not verdict["alert"] and verdict["status"] == "cannot tell" and verdict["not_checkable"]:
        print(f"{PROGRAM}: error: {verdict['summary']}.", file=sys.stderr)
