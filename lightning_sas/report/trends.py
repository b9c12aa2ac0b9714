"""The combined audit of several checkpoints: ``<out>/summary.json`` and ``<out>/report.html``.

Each checkpoint gets a full single audit in its own folder (``checkpoints/<name>/``); the
combined summary keeps one row per checkpoint (:func:`checkpoint_row`: its verdict and key
scores, read from that audit's ``summary.json``) and the run's gate and exit status
(:func:`combined_summary`). The combined report shows the verdict over all checkpoints, the
scores' trends across training (:func:`trend_figures`) and a table linking every checkpoint's
own report (:func:`write_combined_report`).

Everything here is pure data in and data (or one file) out: the command line decides which
checkpoints to audit, runs the audits and chooses the exit status.
"""

from __future__ import annotations

import datetime
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_sas.report.html import png_bytes_uri, template_environment
from lightning_sas.report.plots import Panel, line_figure

__all__ = [
    "COMBINED_KIND",
    "COMBINED_VERSION",
    "checkpoint_row",
    "combined_status",
    "combined_summary",
    "render_combined_report",
    "trend_figures",
    "trend_panels",
    "write_combined_report",
]

#: ``"kind"`` of the combined ``summary.json`` (a single audit's has none).
COMBINED_KIND = "lightning_sas.combined_audit"
#: Version of the combined ``summary.json`` layout; bumped when a field changes meaning.
COMBINED_VERSION = 1
#: The per-method scores a row keeps (``None`` where the audit has none).
ROW_SCORES = ("roi_enrichment", "roi_share", "roi_lift", "deletion_auc", "insertion_auc", "insertion_minus_deletion")


def checkpoint_row(
    summary: Mapping[str, Any],
    *,
    checkpoint: str,
    name: str,
    step: int | None,
    epoch: int | None,
    folder: str,
    cached: bool,
    exit_status: int,
) -> dict[str, Any]:
    """One checkpoint's row of the combined summary, from its single audit's ``summary.json``.

    Args:
        summary: The checkpoint's audit summary (:func:`~lightning_sas.report.summary.build_summary`).
        checkpoint: The checkpoint file's path.
        name: Its short name, unique in the run (its audit's folder name).
        step: The training step it was saved at, ``None`` when unknown.
        epoch: The epoch it was saved in, ``None`` when unknown.
        folder: Its audit's folder (``checkpoints/<name>``, relative to the combined report).
        cached: Whether its audit was reused from an earlier run rather than run again.
        exit_status: What its single audit's exit status was (0 clean, 1 alert, 2 cannot tell).

    Returns:
        A JSON-able dict: the arguments, ``alert``, ``status``, ``verdict`` (the verdict's
        sentence) and ``crossed`` (its ``{"criterion", "method"}`` pairs), ``probes``,
        ``methods`` (per method the scores of :data:`ROW_SCORES`), ``flip_rate`` (the
        intervention's, ``None`` without artifacts), ``discovery`` (``None``, ``{"skipped": why}``
        or ``{"candidates", "confirmed", "best_flip_rate", "best_confirmed_flip_rate"}``),
        ``accuracy`` on the labelled probes with ``labelled_probes`` (``None`` / 0 without
        labels) and ``errors``.
    """
    verdict = summary["verdict"]
    intervention = summary.get("intervention")
    accuracy, labelled = _probe_accuracy(summary.get("probes") or [])
    return {
        "checkpoint": str(checkpoint),
        "name": str(name),
        "step": step,
        "epoch": epoch,
        "folder": str(folder),
        "cached": bool(cached),
        "exit_status": int(exit_status),
        "alert": bool(verdict["alert"]),
        "status": verdict.get("status"),
        "verdict": verdict.get("summary"),
        "crossed": [dict(item) for item in verdict.get("crossed") or []],
        "probes": len(summary.get("probes") or []),
        "methods": {
            method: {key: means.get(key) for key in ROW_SCORES} for method, means in summary["methods"].items()
        },
        "flip_rate": intervention.get("flip_rate") if intervention else None,
        "discovery": _discovery_digest(summary.get("discovery")),
        "accuracy": accuracy,
        "labelled_probes": labelled,
        "errors": dict(summary.get("errors") or {}),
    }


def _probe_accuracy(probes: Sequence[Mapping[str, Any]]) -> tuple[float | None, int]:
    """``(accuracy, labelled)`` over the probes with a label; a probe without a prediction (NaN output) is wrong."""
    labelled = [entry for entry in probes if entry.get("label") is not None]
    if not labelled:
        return None, 0
    correct = sum(entry.get("prediction") == entry["label"] for entry in labelled)
    return correct / len(labelled), len(labelled)


def _discovery_digest(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Discovery in a few numbers: how many candidates, how many confirmed, the best flip rates."""
    if record is None:
        return None
    if "candidates" not in record:
        return {"skipped": record.get("skipped")}
    candidates = record["candidates"]
    confirmed = [candidate for candidate in candidates if candidate.get("confirmed")]
    return {
        "candidates": len(candidates),
        "confirmed": len(confirmed),
        "best_flip_rate": _highest(candidate.get("flip_rate") for candidate in candidates),
        "best_confirmed_flip_rate": _highest(candidate.get("flip_rate") for candidate in confirmed),
    }


def _highest(values: Any) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _ordered(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows by step (unknown steps last), then by name."""
    return sorted(
        (dict(row) for row in rows),
        key=lambda row: (row["step"] is None, row["step"] if row["step"] is not None else 0, row["name"]),
    )


def combined_summary(
    rows: Sequence[Mapping[str, Any]], *, gate: str, exit_status: int, run: Mapping[str, Any]
) -> dict[str, Any]:
    """The combined ``summary.json`` of a multi-checkpoint audit.

    Args:
        rows: One :func:`checkpoint_row` per checkpoint, in any order.
        gate: Which checkpoints' verdicts decided the exit status (the command line's choice).
        exit_status: The run's exit status.
        run: What identifies the run (command line, versions, probes, ...).

    Returns:
        ``{"kind", "version", "created", "gate", "exit_status", "checkpoints", "run"}`` with the
        rows sorted by step (unknown steps last), then name.
    """
    return {
        "kind": COMBINED_KIND,
        "version": COMBINED_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gate": gate,
        "exit_status": int(exit_status),
        "checkpoints": _ordered(rows),
        "run": dict(run),
    }


# ----------------------------------------------------------------------------- trends


def _x_axis(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], str, list[str] | None]:
    """``(x, label, ticks)``: the steps when every checkpoint has its own, else the checkpoints' order and names."""
    steps = [row["step"] for row in rows]
    if all(step is not None for step in steps) and len(set(steps)) == len(steps):
        return [float(step) for step in steps], "training step", None
    return [float(position) for position in range(len(rows))], "checkpoint", [str(row["name"]) for row in rows]


def _method_lines(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, list[float | None]]:
    """Per method with at least one value of ``key``, its value at every checkpoint."""
    methods = list(dict.fromkeys(name for row in rows for name in row["methods"]))
    lines = {name: [row["methods"].get(name, {}).get(key) for row in rows] for name in methods}
    return {name: values for name, values in lines.items() if any(value is not None for value in values)}


def _flip_lines(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """The intervention's flip rate and discovery's best flip rates at every checkpoint, where measured."""
    discovery = [row.get("discovery") or {} for row in rows]
    lines = {
        "intervention (--artifacts)": [row.get("flip_rate") for row in rows],
        "discovery: best candidate": [record.get("best_flip_rate") for record in discovery],
        "discovery: best confirmed": [record.get("best_confirmed_flip_rate") for record in discovery],
    }
    return {label: values for label, values in lines.items() if any(value is not None for value in values)}


def trend_panels(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Panel]]:
    """The trend plots' data: per plot, its panels, only where some checkpoint has the data.

    Plots: ``roi_enrichment`` and ``roi_share`` (per method; with masks), ``flip_rate`` (the
    intervention's and discovery's best), ``faithfulness`` (deletion and insertion AUC per
    method) and ``accuracy`` (on the labelled probes). The x axis is the training step when
    every checkpoint has a distinct one, else the checkpoints' order (named on the ticks);
    checkpoints whose alert fired are marked.

    Args:
        rows: :func:`checkpoint_row` rows, in any order (sorted here as in the combined summary).
    """
    rows = _ordered(rows)
    x, xlabel, ticks = _x_axis(rows)
    marked = [position for position, row in zip(x, rows, strict=True) if row["alert"]]

    def panel(title: str, lines: Mapping[str, Sequence[float | None]], ylabel: str, **extra: Any) -> Panel:
        return Panel(title, x, dict(lines), xlabel, ylabel, ticks=ticks, marked=marked, **extra)

    unit = (-0.02, 1.02)
    accuracy = {"probes predicted right": [row.get("accuracy") for row in rows]}
    candidates = {
        "roi_enrichment": [
            panel("ROI enrichment", _method_lines(rows, "roi_enrichment"), "0 chance, 1 all top pixels on the ROI")
        ],
        "roi_share": [panel("Mean roi_share", _method_lines(rows, "roi_share"), "share of the top pixels on the ROI")],
        "flip_rate": [panel("Flip rates", _flip_lines(rows), "share of pastes that flipped", ylim=unit)],
        "faithfulness": [
            panel("Deletion AUC (lower: more faithful)", _method_lines(rows, "deletion_auc"), "AUC", ylim=unit),
            panel("Insertion AUC (higher: more faithful)", _method_lines(rows, "insertion_auc"), "AUC", ylim=unit),
        ],
        "accuracy": [panel("Accuracy on the probes", accuracy, "share of labelled probes", ylim=unit)],
    }
    kept = {key: [item for item in panels if _has_data(item)] for key, panels in candidates.items()}
    return {key: panels for key, panels in kept.items() if panels}


def _has_data(panel: Panel) -> bool:
    return any(value is not None for values in panel.lines.values() for value in values)


def trend_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """The trend plots across checkpoints as PNG bytes, by name (see :func:`trend_panels`).

    Args:
        rows: :func:`checkpoint_row` rows (at least one).

    Returns:
        ``{"roi_enrichment": png, ...}``: only the plots some checkpoint has data for.
    """
    return {key: line_figure(panels) for key, panels in trend_panels(rows).items()}


# ----------------------------------------------------------------------------- the page


def combined_status(combined: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict box of the combined report: its CSS class, headline and detail lines."""
    rows = combined["checkpoints"]
    alerted = [row["name"] for row in rows if row["alert"]]
    unsure = [row["name"] for row in rows if not row["alert"] and row.get("status") == "cannot tell"]
    failed = [row["name"] for row in rows if row.get("errors")]
    if alerted:
        headline = f"Shortcut alert at {len(alerted)} of {len(rows)} checkpoint(s): {', '.join(alerted)}"
    else:
        headline = f"No shortcut alert at any of the {len(rows)} checkpoint(s)"
    details = [f"The audit cannot tell at: {', '.join(unsure)}"] if unsure else []
    details += [f"Incomplete audits (a method or check failed): {', '.join(failed)}"] if failed else []
    details.append(f"Gate: {combined['gate']}; exit status {combined['exit_status']}.")
    if combined["exit_status"] != 0:
        css = "alert"
    else:
        css = "neutral" if alerted or unsure or failed else "ok"
    return {"class": css, "headline": headline, "details": details}


def _report_href(folder: str, base: Path | None) -> str:
    """The link to a checkpoint's ``report.html``: relative to the combined report where possible, URL-quoted."""
    path = Path(folder)
    if path.is_absolute() and base is not None:
        try:
            path = Path(os.path.relpath(path, base))
        except ValueError:  # another drive (Windows): no relative path exists
            return (path / "report.html").as_uri()
    if path.is_absolute():
        return (path / "report.html").as_uri()
    # "=", "," and "+" are plain in a path (Lightning's names: "epoch=3-step=1200"); "#", "?", "%",
    # spaces, quotes and ":" (a scheme, first) are escaped, so any name links to its own folder.
    return urllib.parse.quote((path / "report.html").as_posix(), safe="/=,+@")


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which optional columns the checkpoint table shows: only those some checkpoint has data for."""
    methods = list(dict.fromkeys(name for row in rows for name in row["methods"]))
    return {
        "methods": methods,
        "roi": any(_method_lines(rows, key) for key in ("roi_enrichment", "roi_share")),
        "faithfulness": any(_method_lines(rows, key) for key in ("deletion_auc", "insertion_auc")),
        "accuracy": any(row.get("accuracy") is not None for row in rows),
        "flip_rate": any(row.get("flip_rate") is not None for row in rows),
        "discovery": any(row.get("discovery") for row in rows),
        "errors": any(row.get("errors") for row in rows),
    }


def _discovery_text(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "–"
    if "skipped" in record:
        return f"skipped: {record['skipped']}"
    best = record["best_flip_rate"]
    flips = "" if best is None else f", best flip rate {best:.3f}"
    return f"{record['candidates']} candidate(s), {record['confirmed']} confirmed{flips}"


def _verdict_brief(row: Mapping[str, Any]) -> str:
    """What the table says under a checkpoint's status: the criteria crossed and by whom, or why it cannot tell."""
    if row["alert"]:
        by_criterion: dict[str, list[str]] = {}
        for item in row.get("crossed") or []:
            by_criterion.setdefault(item["criterion"], []).append(item["method"] or "")
        return "; ".join(
            f"{criterion} ({', '.join(filter(None, names))})" if any(names) else criterion
            for criterion, names in by_criterion.items()
        )
    return str(row.get("verdict") or "") if row.get("status") == "cannot tell" else ""


def _run_text(value: Any) -> str:
    """A value of the run's record as shown: a command line's words joined by spaces."""
    return " ".join(str(part) for part in value) if isinstance(value, list | tuple) else str(value)


#: The trend plots' headings, by :func:`trend_panels`' keys.
TITLES = {
    "roi_enrichment": "ROI enrichment per method",
    "roi_share": "Mean roi_share per method",
    "flip_rate": "Flip rates",
    "faithfulness": "Faithfulness: deletion and insertion AUC per method",
    "accuracy": "Accuracy on the labelled probes",
}


def render_combined_report(combined: Mapping[str, Any], *, base: Path | None = None) -> str:
    """The combined report's HTML: the verdict, the trend plots, one table row per checkpoint.

    Args:
        combined: The combined summary (:func:`combined_summary`).
        base: The folder the page is written to: absolute checkpoint folders are linked relative to it.

    Returns:
        One self-contained HTML document (pictures embedded, CSS inline, every text escaped).
    """
    rows = combined["checkpoints"]
    figures = trend_figures(rows) if rows else {}
    return (
        template_environment()
        .get_template("combined.html")
        .render(
            combined=combined,
            status=combined_status(combined),
            figures=[(key, TITLES[key], png_bytes_uri(png)) for key, png in figures.items()],
            rows=[{"row": row, "href": _report_href(row["folder"], base)} for row in rows],
            columns=_columns(rows),
            discovery_text=_discovery_text,
            verdict_brief=_verdict_brief,
            run_rows=[(str(key), _run_text(value)) for key, value in combined.get("run", {}).items()],
        )
    )


def write_combined_report(combined: Mapping[str, Any], path: os.PathLike[str] | str) -> Path:
    """Write :func:`render_combined_report`'s page to ``path`` (checkpoint links relative to its folder).

    Args:
        combined: The combined summary (:func:`combined_summary`).
        path: Where to write the page, e.g. ``<out>/report.html``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    destination = Path(path)
    page = render_combined_report(combined, base=destination.parent.resolve())
    destination.write_text(page, encoding="utf-8")
    return destination
