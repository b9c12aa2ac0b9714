"""The criteria of the alert rule, each filling one :class:`~lightning_sas.audit.verdict.Verdict`.

:func:`~lightning_sas.audit.verdict.decide` calls them in turn and is the one place a verdict is
made; each criterion here says what it checked, what it could not check and why, and what it
crossed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from lightning_sas.audit.verdict import AlertRule, DiscoveryThresholds, Evidence, Verdict

#: What the discovery rule makes of one candidate (:func:`candidate_finding`).
Finding = Literal["confirmed", "unresolved"]


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


def candidate_finding(candidate: Mapping[str, Any], rule: AlertRule, object_masks: bool) -> Finding | None:
    """What ``rule``'s discovery thresholds for its level (with or without object masks) make of a
    discovered candidate (:meth:`~lightning_sas.trust.discovery.Candidate.to_dict`): ``"confirmed"``
    (a shortcut), ``"unresolved"`` (the control test passes but the labels say the region goes with
    them, or are too few to say: the probes seldom show it on another class, so it may be the
    object) or ``None``. See :class:`~lightning_sas.audit.verdict.DiscoveryThresholds` for the two tests."""
    thresholds = discovery_thresholds(rule, object_masks)
    if thresholds is None:
        return None

    def number(key: str) -> float:
        value = candidate.get(key)
        return float("nan") if value is None else float(value)

    flip, control = number("flip_rate"), number("control_flip_rate")
    contrast = number("contrast")
    if (
        not (math.isfinite(flip) and flip > thresholds.min_flip_rate)
        or not number("recurrence") >= thresholds.min_recurrence
        or (
            thresholds.min_contrast is not None and not (math.isfinite(contrast) and contrast > thresholds.min_contrast)
        )
    ):
        return None
    # A non-local cue (a colour cast) travels with any window of its source: the control flips too.
    control_passes = not (math.isfinite(control) and control > thresholds.max_control_flip_rate)
    if not by_labels(candidate, thresholds):
        # Without labels (or a label test) the control test decides; a few labels cannot back a confirmation.
        too_few = thresholds.max_source_accuracy is not None and labelled(candidate) > 0
        return ("unresolved" if too_few else "confirmed") if control_passes else None
    # The shares are measured in float32: compare with a little slack so k/n exactly at a threshold counts.
    goes_with_errors = number("source_accuracy") <= thresholds.max_source_accuracy + _SLACK  # type: ignore[operator]
    margin = flip - (control if math.isfinite(control) else 0.0)
    if goes_with_errors and margin >= thresholds.min_flip_over_control - _SLACK:
        return "confirmed"
    return "unresolved" if control_passes and not goes_with_errors else None


#: Slack of the comparisons of shares measured in float32.
_SLACK = 1e-6


def labelled(candidate: Mapping[str, Any]) -> int:
    """How many of ``candidate``'s sources have a known label (0 when its share is not a number)."""
    accuracy = candidate.get("source_accuracy")
    if accuracy is None or not math.isfinite(float(accuracy)):
        return 0
    return int(candidate.get("labelled_sources") or 0)


def by_labels(candidate: Mapping[str, Any], thresholds: DiscoveryThresholds) -> bool:
    """Whether ``thresholds`` judge ``candidate`` by its sources' labels (else by its control): the
    label test is on and at least ``min_labelled_sources`` of its sources have a known label."""
    return thresholds.max_source_accuracy is not None and labelled(candidate) >= thresholds.min_labelled_sources


def discovery_thresholds(rule: AlertRule, object_masks: bool) -> DiscoveryThresholds | None:
    """The discovery thresholds of ``rule`` for audits with (or without) object masks."""
    return rule.discovery_with_objects if object_masks else rule.discovery


def check_discovery(evidence: Evidence, rule: AlertRule, verdict: Verdict) -> None:
    """A discovered region that moves other classes' predictions to its own (see :func:`candidate_finding`);
    one the probes cannot tell from the object makes the verdict "cannot tell" unless another criterion fires."""
    found = evidence.discovery
    thresholds = None if found is None else discovery_thresholds(rule, found.object_masks)
    if found is None or thresholds is None:
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
    findings = [(candidate_finding(candidate, rule, found.object_masks), candidate) for candidate in tested]
    confirmed = [candidate for finding, candidate in findings if finding == "confirmed"]
    unresolved = [candidate for finding, candidate in findings if finding == "unresolved"]
    level = "off the object masks" if found.object_masks else "with no side information"
    if confirmed:
        candidate = confirmed[0]  # one confirmed candidate decides; the report lists them all
        errors = ""
        if by_labels(candidate, thresholds):
            errors = (
                f"; only {candidate['source_accuracy']:.0%} of the {candidate['labelled_sources']} labelled probes "
                f"where it appears are labelled as that class (source_accuracy <= {thresholds.max_source_accuracy:g})"
            )
        verdict.reasons.append(
            f"a region found in {found.method}'s maps {level} ({_where(candidate)}) moves "
            f"{candidate['flip_rate']:.0%} of the other classes' probes to its class when pasted on "
            f"(control {_share(candidate.get('control_flip_rate'))}; flip_rate > {thresholds.min_flip_rate:g}){errors}"
        )
        verdict.crossed.append(("discovery", None))
    elif unresolved:
        candidate = unresolved[0]
        count = labelled(candidate)
        why = (
            f"{candidate['source_accuracy']:.0%} of the {count} labelled probes where it appears are labelled as "
            f"that class (more than {thresholds.max_source_accuracy:g}): the probes seldom show it on images of "
            "another class"
            if by_labels(candidate, thresholds)
            else f"only {count} of the probes where it appears have a label (fewer than "
            f"{thresholds.min_labelled_sources}): too few to show whether it goes with the model's errors"
        )
        verdict.not_checkable["discovery"] = (
            f"a region found in {found.method}'s maps {level} ({_where(candidate)}) moves "
            f"{candidate['flip_rate']:.0%} of the other classes' probes to its class when pasted on (control "
            f"{_share(candidate.get('control_flip_rate'))}), but {why}, so it may be the object itself. Object "
            "masks, or probes where it appears on other classes, would decide"
        )


def _share(value: object) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.0%}"  # type: ignore[arg-type]


def _where(candidate: Mapping[str, Any]) -> str:
    y0, x0, y1, x1 = candidate["box"]
    return (
        f"class {candidate['class_index']}, at y {y0:.2f}-{y1:.2f}, x {x0:.2f}-{x1:.2f}, "
        f"in {len(candidate['sources'])} probes"
    )
