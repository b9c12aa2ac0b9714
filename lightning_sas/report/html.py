"""``report.html``: the audit for people, rendered from the Jinja2 templates in ``templates/``.

``report.html`` is one self-contained file: every picture is embedded as a base64 PNG (the
faithfulness plot is drawn from ``summary.json``'s mean deletion / insertion curves), the CSS
is inline, wide tables scroll inside their own box, and every piece of text that comes from the
user (file names, labels, class names, paths, the command line) is HTML-escaped by the template
engine (autoescaping).

The names the command line imports from here (the summary, the baseline comparison and the
output folder's staging) are re-exported from :mod:`~lightning_sas.report.summary`,
:mod:`~lightning_sas.report.baseline`, :mod:`~lightning_sas.report.verdict` and
:mod:`~lightning_sas.report.staging`.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from PIL import Image

from lightning_sas.audit.run import AuditResult
from lightning_sas.probes.probe_set import Probes, class_label
from lightning_sas.report.plots import curve_panels, line_figure
from lightning_sas.report.render import overlay, to_display, to_uint8
from lightning_sas.report.summary import AUDIT_PARTS, method_errors
from lightning_sas.report.verdict import rule_text

__all__ = [
    "faithfulness_plot",
    "png_bytes_uri",
    "png_data_uri",
    "probe_pictures",
    "render_report",
    "report_title",
    "template_environment",
    "write_report",
]


def png_data_uri(picture: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an RGB uint8 ``[H, W, 3]`` array."""
    buffer = io.BytesIO()
    Image.fromarray(picture, mode="RGB").save(buffer, format="PNG")
    return png_bytes_uri(buffer.getvalue())


def png_bytes_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of a PNG file's bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def faithfulness_plot(summary: Mapping[str, Any]) -> str | None:
    """The mean deletion and insertion curves of every method, side by side, as a PNG data URI.

    Read from the summary (``"methods"``' ``deletion_curve`` / ``insertion_curve``, written by
    :func:`~lightning_sas.report.summary.build_summary`), so the report needs nothing beyond
    what ``summary.json`` keeps; ``None`` when no method has a curve (faithfulness off or failed).
    """
    panels = curve_panels(summary["methods"])
    return png_bytes_uri(line_figure(panels)) if panels else None


def probe_pictures(
    result: AuditResult,
    probes: Probes,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> list[dict[str, np.ndarray]]:
    """Per probe: ``"image"`` and one heatmap overlay per method, as RGB uint8 arrays."""
    display = to_display(probes.images, mean, std)
    layers = {"image": display}
    for name, maps in result.maps.items():
        layers[name] = overlay(display, maps.to(display.device))
    as_uint8 = {name: to_uint8(pictures) for name, pictures in layers.items()}
    return [{name: pictures[position] for name, pictures in as_uint8.items()} for position in range(len(probes))]


def report_title(summary: Mapping[str, Any]) -> str:
    """``lightning-sas audit: <model class> from <checkpoint path>``.

    Example:
        >>> report_title({"model_class": "LitClassifier", "checkpoint": "runs/last.ckpt"})
        'lightning-sas audit: LitClassifier from runs/last.ckpt'
    """
    model = summary.get("model_class") or str(summary.get("model", "")).rpartition(":")[2] or "model"
    return f"lightning-sas audit: {model} from {summary.get('checkpoint')}"


def render_report(
    summary: Mapping[str, Any],
    pictures: Sequence[Mapping[str, np.ndarray]],
    sheets: Mapping[str, np.ndarray] | None = None,
) -> str:
    """The HTML report of one audit.

    Args:
        summary: The audit's summary (with its baseline comparison, if any).
        pictures: Per probe (same order as ``summary["probes"]``): ``"image"`` and one overlay
            per method (from :func:`probe_pictures`).
        sheets: Discovery's pictures by tag (``audit/discovery/candidates``, ``.../strategies``).

    Returns:
        One self-contained HTML document.
    """
    areas = [entry["roi_area"] for entry in summary["probes"] if entry.get("roi_area") is not None]
    return (
        template_environment()
        .get_template("report.html")
        .render(
            summary=summary,
            curves=faithfulness_plot(summary),
            pictures=pictures,
            sheets=dict(sheets or {}),
            title=report_title(summary),
            probes_with_mask=sum(entry["has_mask"] for entry in summary["probes"]),
            chance=f" (here {sum(areas) / len(areas):.3f} on average)" if areas else "",
        )
    )


def write_report(
    summary: Mapping[str, Any],
    pictures: Sequence[Mapping[str, np.ndarray]],
    path: os.PathLike[str] | str,
    sheets: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write :func:`render_report`'s document to ``path``."""
    destination = Path(path)
    destination.write_text(render_report(summary, pictures, sheets), encoding="utf-8")
    return destination


@functools.cache
def template_environment() -> jinja2.Environment:
    """The template environment: the package's ``templates`` folder, HTML autoescaped, the report's helpers.

    Shared with the combined report (:mod:`~lightning_sas.report.trends`), so both pages use the
    same CSS, filters and escaping.
    """
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lightning_sas.report", "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(fmt=_format, signed=_format_signed, delta=_format_change, number=format)
    environment.globals.update(
        class_label=class_label,
        crossed_criteria=_crossed_criteria,
        failed=_failed,
        file_hashes=_file_hashes,
        meta_rows=_meta_rows,
        method_errors=method_errors,
        method_status=_method_status,
        png_data_uri=png_data_uri,
        probe_rows=_probe_rows,
        rule_text=rule_text,
        sanity_warning=_sanity_warning,
        stage_text=_stage_text,
        status_class=_status_class,
    )
    return environment


# ----------------------------------------------------------------------------- what the templates call


def _format(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _format_signed(change: float | None) -> str:
    return "–" if change is None else f"{change:+.3f}"


def _format_change(change: float | None) -> str:
    return "" if change is None else f" ({change:+.3f})"


def _failed(name: str, method_failed: str) -> str:
    """How the report says that the audit part or method ``name`` failed."""
    if name not in AUDIT_PARTS:
        return method_failed
    return "could not be measured" if name == "intervention" else "could not be scored"


def _status_class(summary: Mapping[str, Any]) -> str:
    """The verdict box's CSS class: ``alert`` (alert, cannot tell, or failures), ``neutral`` or ``ok``."""
    verdict = summary["verdict"]
    if summary.get("errors") or verdict["alert"] or verdict.get("not_checkable"):
        return "alert"
    return "neutral" if not verdict["checked"] else "ok"


def _sanity_warning(sanity: Mapping[str, Any]) -> str:
    flagged = sanity["flagged"]
    finals = ", ".join(f"{name} {_format(sanity['similarity'][name][-1], 2)}" for name in flagged)
    return (
        f"the maps of {', '.join(flagged)} do not depend on the model's weights: with every parameter "
        f"randomised they keep a rank similarity above {sanity['threshold']:g} to the trained model's maps "
        f"({finals}); they explain the image, not the model. A warning, not an alert."
    )


def _stage_text(stage: Sequence[str]) -> str:
    """The modules one sanity stage randomised: the first six, and how many there are when more."""
    shown = ", ".join(name or "(root)" for name in stage[:6])
    return shown + (f", … ({len(stage)})" if len(stage) > 6 else "")


def _meta_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The rows of the run's table: what identifies the run, as ``(key, text)``."""
    size = summary.get("image_size")
    rows = [
        ("checkpoint", summary.get("checkpoint")),
        ("model", summary.get("model")),
        ("output", summary.get("output") if summary.get("output") is not None else "the model's output"),
        ("created", summary.get("created")),
        ("device", summary.get("device")),
        ("image size", " x ".join(map(str, size)) if isinstance(size, list) else size),
        ("channels / mean / std", f"{summary.get('channels')} / {summary.get('mean')} / {summary.get('std')}"),
        ("explained class", summary.get("target")),
        *((f"{name} layer", means["layer"]) for name, means in summary["methods"].items() if means.get("layer")),
        (
            "lightning_sas / torch / lightning",
            f"{summary.get('lightning_sas')} / {summary.get('torch')} / {summary.get('lightning')}",
        ),
        ("command", " ".join(str(part) for part in summary.get("command", []))),
    ]
    return [(key, str(value)) for key, value in rows]


def _crossed_criteria(summary: Mapping[str, Any], name: str) -> list[str]:
    """The criteria method ``name`` crossed, sorted."""
    return sorted({item["criterion"] for item in summary["verdict"]["crossed"] if item["method"] == name})


def _method_status(summary: Mapping[str, Any], name: str) -> str:
    """A method's status under the rule: crossed (which criteria), does not vote, ok, or why it has no score."""
    means = summary["methods"][name]
    criteria = _crossed_criteria(summary, name)
    excluded = summary["verdict"].get("excluded") or {}
    if criteria:
        return f"crossed ({', '.join(criteria)})"
    if name in excluded:
        return f"does not vote: {excluded[name]}"
    if means["roi_share"] is not None:
        return "ok"
    return "no finite score" if means["probes_with_mask"] else "no mask"


def _probe_rows(summary: Mapping[str, Any], pictures: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Per probe, what its row shows beyond the summary's entry: pictures, baseline change, marks."""
    baseline = summary.get("baseline")
    changes = {entry["file"]: entry for entry in baseline["probes"]} if baseline else {}
    top_files = {(name, item["file"]) for name, top in summary["verdict"]["top_probes"].items() for item in top}
    rows = []
    for entry, picture in zip(summary["probes"], pictures, strict=True):
        change = changes.get(entry["file"], {})
        flagged = set(change.get("flagged", []))
        nonfinite = set(entry.get("nonfinite") or [])
        row_class = "probe flag" if flagged or change.get("prediction_changed") else "probe"
        share_class = {}
        for name in summary["methods"]:
            marks = [
                mark
                for mark, marked in (
                    ("flag", name in flagged),
                    ("crossed", (name, entry["file"]) in top_files),
                    ("nonfinite", name in nonfinite),
                )
                if marked
            ]
            share_class[name] = f"num {' '.join(marks)}"
        rows.append(
            {
                "entry": entry,
                "picture": picture,
                "change": change,
                "nonfinite": nonfinite,
                "share_class": share_class,
                "predicted": _predicted(entry, change, summary.get("class_names")),
                "row_class": row_class + (" nonfinite" if nonfinite else ""),
            }
        )
    return rows


def _predicted(entry: Mapping[str, Any], change: Mapping[str, Any], class_names: Sequence[str] | None) -> str:
    """The predicted class as shown, with the previous one when the prediction changed against the baseline."""
    predicted = "–" if entry["prediction_name"] is None else entry["prediction_name"]
    if change.get("prediction_changed"):
        previous = change.get("previous_prediction")
        was = class_label(previous, class_names) if isinstance(previous, int) else "?"
        predicted += f" (was {was})"
    return predicted


def _file_hashes(summary: Mapping[str, Any]) -> dict[str, str]:
    """Per probe file, the SHA-256 of its bytes (empty when unknown)."""
    return {entry["file"]: entry.get("file_sha256") or "" for entry in summary["probes"]}
