"""What the callback says and keeps: the cost estimate, the sanity check, verdicts and alerts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lightning_sas.audit.cost import AuditCost
from lightning_sas.audit.result import AuditResult
from lightning_sas.audit.verdict import AlertRule, Verdict
from lightning_sas.callback.records import AuditRecords
from lightning_sas.trust.sanity import SanityResult


def cost_report(
    cost: AuditCost, probes: int, training_images: float | None, warning_share: float
) -> tuple[AuditCost, str, str | None]:
    """The estimate of every audit (the sanity check said apart: it runs once), its text, and
    a warning when it is more than ``warning_share`` of the training time between two audits.

    Args:
        cost: The estimate of the first audit (sanity check included).
        probes: How many probes an audit explains.
        training_images: Training images seen between two audits, if known.
        warning_share: The share of the training time above which the text is a warning.
    """
    message = f"SASAuditCallback: each audit of {probes} probes will take {cost.describe()}."
    sanity = cost.passes.get("sanity")
    if sanity is not None:
        first_only = sanity[0] * cost.seconds_per_pass[0]
        cost = replace(cost, seconds=cost.seconds - first_only)
        message = (
            f"SASAuditCallback: each audit of {probes} probes will take {cost.describe()}; "
            f"the first one ≈ {first_only:,.0f} s more for the sanity check (its passes are listed)."
        )
    if training_images is None:
        return cost, message, None
    # Training an image costs about a forward + backward; the audit's own timing says how much.
    between = training_images * cost.seconds_per_pass[0]
    message += f" Training between two audits: ≈ {between:,.0f} s (estimated the same way)."
    if cost.seconds <= warning_share * between:
        return cost, message, None
    warning = (
        f"{message} That is more than {warning_share:.0%} of the training time. To audit for "
        "less: fewer probes (`probe=`), fewer SaS iterations (`methods=(SaS(iterations=30), 'gradcam')`), "
        "a larger `every_n_epochs`, `faithfulness=False`, or a GPU."
    )
    return cost, message, warning


def sanity_report(sanity: SanityResult, epoch: int) -> tuple[dict[str, Any], str | None, str]:
    """The sanity check as plain data (kept for resume), a warning if it flagged methods, and
    its Markdown table (TensorBoard's ``audit/sanity``)."""
    similarity = {name: [float(value) for value in values] for name, values in sanity.similarity.items()}
    record = {
        "epoch": epoch,
        "stages": [len(stage) for stage in sanity.stages],
        "similarity": similarity,
        "flagged": sanity.flagged,
        "threshold": sanity.threshold,
    }
    rows = [f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for name, values in similarity.items()]
    header = "| method | " + " | ".join(f"stage {i + 1}" for i in range(len(sanity.stages))) + " |"
    text = "\n".join(
        [
            "Spearman correlation of each method's maps with the trained model's maps after re-initialising "
            f"the parameters from the output end (cumulative stages; flagged above {sanity.threshold:g} at the "
            "last stage, where every parameter is random):",
            "",
            header,
            "|---|" + "---|" * len(sanity.stages),
            *rows,
        ]
    )
    if not sanity.flagged:
        return record, None, text
    warning = (
        f"SASAuditCallback: sanity check: the maps of {', '.join(sanity.flagged)} do not depend on the model's "
        f"weights (similarity to the trained maps above {sanity.threshold:g} with every parameter random): "
        "they explain the image, not the model; do not trust their shortcut scores."
    )
    return record, warning, f"**{warning}**\n\n{text}"


def verdict_record(verdict: Verdict, epoch: int, step: int) -> dict[str, Any]:
    """One audit's verdict as plain data (:attr:`SASAuditCallback.verdicts`)."""
    return {
        "epoch": epoch,
        "step": step,
        "alert": verdict.alert,
        "status": verdict.status,
        "checked": verdict.checked,
        "not_checkable": verdict.not_checkable,
        "excluded": verdict.excluded,
    }


def alert_report(
    verdict: Verdict, result: AuditResult, names: Sequence[str], epoch: int, step: int, min_roi_pixels: int
) -> tuple[dict[str, Any], str]:
    """A shortcut alert as plain data (:attr:`SASAuditCallback.alerts`) and as the warning's text,
    naming the (up to three) probes whose maps lean on the ROI most."""
    leaning: list[str] = []
    for _criterion, method in verdict.crossed:
        if method is None or method not in result.roi_share:
            continue
        shares = result.roi_share[method].detach().cpu()
        ranked = torch.argsort(torch.nan_to_num(shares, nan=-1.0), descending=True).tolist()
        leaning += [names[i] for i in ranked[:3] if not math.isnan(float(shares[i]))]
    worst = list(dict.fromkeys(leaning))[:3]
    intervention = result.intervention
    alert = {
        "epoch": epoch,
        "step": step,
        "crossed": [{"criterion": criterion, "method": method} for criterion, method in verdict.crossed],
        "reasons": verdict.reasons,
        "scores": result.mean_scores(min_roi_pixels),
        "flip_rate": None if intervention is None else intervention.flip_rate,
        "probes": worst,
    }
    leaning_text = f"; probes leaning on it most: {', '.join(worst)}" if worst else ""
    return alert, f"Shortcut alert at epoch {epoch}: " + "; ".join(verdict.reasons) + leaning_text + "."


@dataclass
class ShortcutOutcome:
    """What one audit's verdict makes the callback say: warnings, texts to write (tag, text), and
    whether it alerted."""

    warnings: list[str] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    alert: bool = False


def shortcut_outcome(
    records: AuditRecords,
    verdict: Verdict,
    result: AuditResult,
    names: Sequence[str],
    epoch: int,
    step: int,
    rule: AlertRule,
) -> ShortcutOutcome:
    """Record ``verdict`` (and its alert) in ``records``; say a new "cannot tell" reason once and
    the first alert in the text ``audit/alert``, every alert as a warning."""
    records.verdicts.append(verdict_record(verdict, epoch, step))
    outcome = ShortcutOutcome(alert=verdict.alert)
    if verdict.status == "cannot tell" and verdict.not_checkable:
        reasons = "; ".join(verdict.not_checkable.values())
        if reasons not in records.cannot_tell_warned:
            records.cannot_tell_warned.add(reasons)
            message = (
                f"SASAuditCallback: the audit at epoch {epoch} cannot tell whether the model uses a shortcut: "
                f"{reasons}."
            )
            outcome.warnings.append(message)
            outcome.texts.append(("audit/verdict", message))
    if verdict.alert:
        alert, message = alert_report(verdict, result, names, epoch, step, rule.min_roi_pixels)
        if not records.alerts:
            outcome.texts.append(("audit/alert", message))
        records.alerts.append(alert)
        outcome.warnings.append(message)
    return outcome
