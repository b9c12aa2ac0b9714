"""What an audit shows, independent of where it goes: pictures, captions, scalars, the manifest, the layout.

The tag names are fixed (the dashboard, the CLI and the tests rely on them):
``audit/grid/<method>`` (sorted before the per-probe panels, so TensorBoard shows the
method grids together first), ``audit/probe_<NN>``, ``audit/<method>/roi_share``,
``audit/<method>/roi_mass``, ``audit/<method>/agreement``, ``audit/seconds``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_sas.audit.run import AuditResult
from lightning_sas.probes.probe_set import Probes, class_label
from lightning_sas.report.discovery_pictures import candidate_label, candidate_sheet, strategy_sheet
from lightning_sas.report.render import method_grid, overlay, probe_panel, to_display
from lightning_sas.scores.metrics import spearman


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
    pictures.update(discovery_pictures(result, display, class_names, title))
    return pictures


def discovery_pictures(
    result: AuditResult, display: Tensor, class_names: Sequence[str] | None, title: str = ""
) -> dict[str, np.ndarray]:
    """``audit/discovery/candidates`` and ``audit/discovery/strategies`` when discovery ran."""
    found = result.discovery
    if found is None:
        return {}
    method = str(found.settings.get("method", ""))
    pictures = {
        "audit/discovery/candidates": candidate_sheet(
            display, found, result.predictions, class_names, f"shortcut candidates ({method}) {title}".strip()
        ),
        "audit/discovery/strategies": strategy_sheet(
            display, result.maps[method], found, class_names, f"strategies ({method}) {title}".strip()
        )
        if method in result.maps
        else None,
    }
    return {tag: picture for tag, picture in pictures.items() if picture is not None}


def discovery_markdown(result: AuditResult, class_names: Sequence[str] | None = None) -> str | None:
    """The discovered candidates as a Markdown table (text ``audit/discovery``), or ``None``."""
    found = result.discovery
    if found is None:
        return (
            None if result.discovery_skipped is None else f"Shortcut discovery did not run: {result.discovery_skipped}."
        )
    method = found.settings.get("method", "?")
    lines = [
        f"Shortcut discovery in {method}'s maps: {len(found.candidates)} candidate region(s), most suspicious first."
    ]
    if not found.candidates:
        return lines[0]
    lines += [
        "",
        "| # | candidate | consistency | contrast | labelled as its class | suspicion |",
        "|---|---|---|---|---|---|",
    ]
    for number, candidate in enumerate(found.candidates, start=1):
        labelled = (
            f"{candidate.source_accuracy:.0%} of {candidate.labelled_sources}" if candidate.labelled_sources else "–"
        )
        lines.append(
            f"| {number} | {candidate_label(candidate, class_names)} | {candidate.consistency:.2f} | "
            f"{candidate.contrast:.2f} | {labelled} | {candidate.suspicion:.2f} |"
        )
    return "\n".join(lines)


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
    scalars.update(discovery_scalars(result))
    scalars["audit/seconds"] = float(result.seconds)
    return scalars


#: Discovery's scalars (``audit/discovery/<name>``): the most suspicious candidate's, the count, the
#: evidence off the objects (with object masks).
DISCOVERY_SCALARS = ("top_flip_rate", "top_control_flip_rate", "top_suspicion", "candidates", "outside_enrichment")


def discovery_scalars(result: AuditResult) -> dict[str, float]:
    """Discovery's scalars (finite ones only), when it ran."""
    found = result.discovery
    if found is None:
        return {}
    values = {"candidates": float(len(found.candidates)), "outside_enrichment": found.outside_enrichment}
    if found.candidates:
        top = found.candidates[0]
        values.update(
            top_flip_rate=top.flip_rate, top_control_flip_rate=top.control_flip_rate, top_suspicion=top.suspicion
        )
    return {f"audit/discovery/{name}": float(value) for name, value in values.items() if math.isfinite(value)}


#: Scores that get a chart of their own in TensorBoard's custom-scalars layout, every method on it.
_METHOD_CHARTS = {
    "roi": ("roi_enrichment", "roi_share", "roi_lift", "roi_mass"),
    "faithfulness": ("insertion_minus_deletion", "deletion_auc", "insertion_auc"),
    "drift": ("agreement",),
}


def scalar_layout(
    methods: Sequence[str],
    *,
    roi: bool = True,
    faithfulness: bool = True,
    intervention: bool = False,
    discovery: bool = False,
) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalars layout: one chart per score with every method on it.

    Charts hold ``roi_enrichment``, ``roi_share``, ``roi_lift``, ``roi_mass`` (with ``roi``), the faithfulness
    scores (with ``faithfulness``), ``agreement`` (drift), and the intervention's
    ``flip_rate`` and ``probability_change`` (with ``intervention``), and discovery's top candidate
    (with ``discovery``). Tags are exact
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
    if discovery:
        tags = [f"audit/discovery/{name}" for name in DISCOVERY_SCALARS if name != "candidates"]
        charts["discovery"] = ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]
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
