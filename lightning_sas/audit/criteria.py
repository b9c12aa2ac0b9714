"""The criteria of the alert rule, each filling one :class:`~lightning_sas.audit.verdict.Verdict`.

:func:`~lightning_sas.audit.verdict.decide` calls them in turn and is the one place a verdict is
made; each criterion here says what it checked, what it could not check and why, and what it
crossed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning_sas.audit.verdict import AlertRule, DiscoveryThresholds, Evidence, Verdict


def check_roi(evidence: Evidence, rule: AlertRule, verdict: Verdict) -> None:
    # Imported here: the command line reads this module's defaults before it imports torch, so
    # that a usage error is reported at once.
    import torch

    criteria = [
        name
        for name, limit in (("roi_enrichment", rule.min_enrichment), ("roi_share", rule.max_roi_share))
        if limit is not None
    ]
    pixels = torch.tensor(list(evidence.roi_pixels), dtype=torch.float32)
    if not criteria or not bool((pixels > 0).any()):
        return
    large_enough = pixels >= rule.min_roi_pixels
    _score_voters(evidence, rule, verdict, pixels, large_enough)
    if not bool(large_enough.any()):
        reason = f"every probe's ROI is empty or smaller than {rule.min_roi_pixels} pixels (AlertRule.min_roi_pixels)"
    elif not verdict.scores:
        reason = (
            "no method could vote on the ROIs (" + "; ".join(f"{m}: {why}" for m, why in verdict.excluded.items()) + ")"
        )
    else:
        reason = ""
    for criterion in criteria:
        why = reason
        if not why and not any(math.isfinite(scores[criterion]) for scores in verdict.scores.values()):
            why = "every probe's ROI covers the whole image, so no map can be enriched on it"
        if why:
            verdict.not_checkable[criterion] = why
            continue
        verdict.checked.append(criterion)
        _cross(criterion, rule, verdict)


def _score_voters(evidence: Evidence, rule: AlertRule, verdict: Verdict, pixels: Any, large_enough: Any) -> None:
    """Each voting method's ROI scores into ``verdict.scores``; why the others do not vote into ``excluded``."""
    import torch

    from lightning_sas.scores.metrics import roi_enrichment

    flagged = set(evidence.sanity_flagged)
    for method, shares in evidence.roi_share.items():
        if rule.voters is not None and method not in rule.voters:
            verdict.excluded[method] = "not one of the rule's voters"
            continue
        if method in flagged:
            verdict.excluded[method] = "its maps failed the sanity check (they do not depend on the model's weights)"
            continue
        share = torch.tensor([float(value) for value in shares], dtype=torch.float32)
        counted = large_enough & torch.isfinite(share)
        if not bool(counted.any()):
            flat = evidence.flat.get(method)
            all_flat = flat is not None and all(flat[i] for i in torch.nonzero(large_enough).flatten().tolist())
            verdict.excluded[method] = (
                "its maps are flat (no evidence) on every probe with an ROI"
                if all_flat
                else "no probe with a large enough ROI has a finite map"
            )
            continue
        enrichment = roi_enrichment(torch.where(counted, share, float("nan")), pixels, evidence.image_pixels)
        verdict.scores[method] = {
            "roi_enrichment": float(enrichment),
            "roi_share": float(share[counted].mean()),
            "probes": int(counted.sum()),
        }


def _cross(criterion: str, rule: AlertRule, verdict: Verdict) -> None:
    """Record every voting method whose ``criterion`` score is above its limit."""
    for method, scores in verdict.scores.items():
        value = scores[criterion]
        limit = rule.enrichment_threshold(method) if criterion == "roi_enrichment" else rule.max_roi_share
        if limit is None or not (math.isfinite(value) and value > limit):
            continue
        if criterion == "roi_enrichment":
            text = (
                f"{method}'s top-ranked pixels are enriched on the ROI (roi_enrichment {value:.2f} > "
                f"{limit:g}; 0 is chance, 1 is all on the ROI)"
            )
        else:
            text = f"{method} puts {value:.2f} of its top-ranked pixels on the ROI (roi_share {value:.2f} > {limit:g})"
        verdict.reasons.append(text)
        verdict.crossed.append((criterion, method))


def check_intervention(evidence: Evidence, rule: AlertRule, verdict: Verdict) -> None:
    if rule.min_flip_rate is None or evidence.flip_rate is None:
        return
    if not evidence.eligible_probes or not math.isfinite(evidence.flip_rate):
        verdict.not_checkable["flip_rate"] = (
            f"every probe is already predicted as the artifact's class {evidence.artifact_class}, so no probe is "
            "left to flip (a model that predicts one class for every probe is suspect in itself)"
        )
        return
    verdict.checked.append("flip_rate")
    if evidence.flip_rate > rule.min_flip_rate:
        verdict.reasons.append(
            f"pasting the artifact moves {evidence.flip_rate:.0%} of the other classes' probes to its class "
            f"(flip_rate {evidence.flip_rate:.2f} > {rule.min_flip_rate:g})"
        )
        verdict.crossed.append(("flip_rate", None))


def confirmed_candidate(candidate: Mapping[str, Any], rule: AlertRule, object_masks: bool) -> bool:
    """Whether a discovered candidate (:meth:`~lightning_sas.trust.discovery.Candidate.to_dict`) is a
    shortcut under ``rule``'s discovery thresholds for its level (with or without object masks)."""
    thresholds = discovery_thresholds(rule, object_masks)
    if thresholds is None:
        return False

    def number(key: str) -> float:
        value = candidate.get(key)
        return float("nan") if value is None else float(value)

    flip, control = number("flip_rate"), number("control_flip_rate")
    if not (math.isfinite(flip) and flip > thresholds.min_flip_rate):
        return False
    if math.isfinite(control) and control > thresholds.max_control_flip_rate:
        return False  # a non-local cue: any window of the source flips too
    if not number("recurrence") >= thresholds.min_recurrence:
        return False
    contrast = number("contrast")
    return thresholds.min_contrast is None or (math.isfinite(contrast) and contrast > thresholds.min_contrast)


def discovery_thresholds(rule: AlertRule, object_masks: bool) -> DiscoveryThresholds | None:
    """The discovery thresholds of ``rule`` for audits with (or without) object masks."""
    return rule.discovery_with_objects if object_masks else rule.discovery


def check_discovery(evidence: Evidence, rule: AlertRule, verdict: Verdict) -> None:
    """A discovered region that moves other classes' predictions to its own (see :func:`confirmed_candidate`)."""
    found = evidence.discovery
    if found is None or discovery_thresholds(rule, found.object_masks) is None:
        return
    if found.skipped is not None:
        verdict.not_checkable["discovery"] = f"shortcut discovery could not run: {found.skipped}"
        return
    tested = [candidate for candidate in found.candidates if candidate.get("trials")]
    if found.candidates and not tested:
        verdict.not_checkable["discovery"] = (
            "shortcut discovery found candidate regions but no probe of another class to paste them onto "
            "(every probe is predicted as one class)"
        )
        return
    verdict.checked.append("discovery")
    limit = discovery_thresholds(rule, found.object_masks).min_flip_rate  # type: ignore[union-attr]
    for candidate in tested:
        if not confirmed_candidate(candidate, rule, found.object_masks):
            continue
        y0, x0, y1, x1 = candidate["box"]
        level = "off the object masks" if found.object_masks else "with no side information"
        verdict.reasons.append(
            f"a region found in {found.method}'s maps {level} (class {candidate['class_index']}, at y "
            f"{y0:.2f}-{y1:.2f}, x {x0:.2f}-{x1:.2f}, in {len(candidate['sources'])} probes) moves "
            f"{candidate['flip_rate']:.0%} of the other classes' probes to its class when pasted on "
            f"(control {candidate['control_flip_rate']:.0%}; flip_rate > {limit:g})"
        )
        verdict.crossed.append(("discovery", None))
        return  # one confirmed candidate decides; the report lists them all
