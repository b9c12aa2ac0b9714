"""The discovery criterion of ``decide``: each level of side information, and what it cannot tell."""

from __future__ import annotations

import math

import pytest

from lightning_sas.audit.criteria import candidate_finding
from lightning_sas.audit.verdict import AlertRule, DiscoveryEvidence, DiscoveryThresholds, Evidence, decide

RULE = AlertRule()


def candidate(**fields: object) -> dict:
    """A discovered candidate's plain data (``Candidate.to_dict``): a confirmed shortcut unless overridden."""
    record = {
        "class_index": 1,
        "sources": [0, 2, 4, 6],
        "box": [0.0, 0.0, 0.25, 0.25],
        "area": 0.06,
        "flip_rate": 0.9,
        "control_flip_rate": 0.0,
        "contrast": 0.8,
        "recurrence": 0.5,
        "outside_object": math.nan,
        "trials": 16,
    }
    record.update(fields)
    return record


def confirmed(found: dict, rule: AlertRule, object_masks: bool) -> bool:
    return candidate_finding(found, rule, object_masks) == "confirmed"


def evidence(*candidates: dict, object_masks: bool = False, skipped: str | None = None) -> Evidence:
    found = DiscoveryEvidence(candidates=list(candidates), object_masks=object_masks, method="sas", skipped=skipped)
    return Evidence(image_pixels=256, roi_pixels=[0] * 8, roi_share={"sas": [math.nan] * 8}, discovery=found)


def test_a_recurring_region_that_flips_others_and_not_its_control_is_a_shortcut() -> None:
    verdict = decide(evidence(candidate()), RULE)
    assert verdict.status == "shortcut" and verdict.crossed == [("discovery", None)]
    assert "moves 90% of the other classes' probes" in verdict.reasons[0] and "control 0%" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"flip_rate": RULE.discovery.min_flip_rate}, "flips too few"),
        ({"control_flip_rate": 0.9}, "a non-local cue: the control flips too"),
        ({"recurrence": 0.05}, "a region of a few probes only"),
        ({"flip_rate": None}, "not measured"),
    ],
)
def test_what_is_not_a_confirmed_shortcut(fields: dict, why: str) -> None:
    verdict = decide(evidence(candidate(**fields)), RULE)
    assert verdict.status == "no shortcut", why
    assert verdict.checked == ["discovery"]


def test_each_level_of_side_information_has_its_own_thresholds() -> None:
    # Off the object masks, a control that flips too is no reason to doubt (candidates are off the
    # object already), but the region must recur in more of its class.
    controlled = candidate(control_flip_rate=0.5)
    assert not confirmed(controlled, RULE, object_masks=False)
    assert confirmed(controlled, RULE, object_masks=True)
    rare = candidate(recurrence=0.15)
    assert confirmed(rare, RULE, object_masks=False)
    assert not confirmed(rare, RULE, object_masks=True)
    verdict = decide(evidence(controlled, object_masks=True), RULE)
    assert verdict.status == "shortcut" and "off the object masks" in verdict.reasons[0]
    contrast = AlertRule(discovery=DiscoveryThresholds(min_flip_rate=0.1, min_contrast=0.9))
    assert not confirmed(candidate(), contrast, object_masks=False)


def test_discovery_that_could_not_run_or_test_says_it_cannot_tell() -> None:
    skipped = decide(evidence(skipped="8 probes; discovery needs at least 16"), RULE)
    assert skipped.status == "cannot tell"
    assert "discovery needs at least 16" in skipped.not_checkable["discovery"]
    untested = decide(evidence(candidate(trials=0, flip_rate=None)), RULE)
    assert untested.status == "cannot tell" and "no probe of another class" in untested.not_checkable["discovery"]
    # Nothing recurred: checked, and no shortcut.
    assert decide(evidence(), RULE).status == "no shortcut"


def test_the_criterion_can_be_switched_off_and_its_thresholds_are_checked() -> None:
    assert decide(evidence(candidate()), AlertRule(discovery=None)).status == "cannot tell"
    assert decide(evidence(candidate(), object_masks=True), AlertRule(discovery=None)).status == "shortcut"
    with pytest.raises(ValueError, match="min_flip_rate"):
        DiscoveryThresholds(min_flip_rate=1.5)
    with pytest.raises(ValueError, match="min_contrast"):
        DiscoveryThresholds(min_flip_rate=0.1, min_contrast="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_source_accuracy"):
        DiscoveryThresholds(min_flip_rate=0.1, max_source_accuracy=1.5)
    with pytest.raises(ValueError, match="min_flip_over_control"):
        DiscoveryThresholds(min_flip_rate=0.1, min_flip_over_control=2.0)
    with pytest.raises(ValueError, match="discovery_with_objects"):
        AlertRule(discovery_with_objects=0.3)  # type: ignore[arg-type]


def labelled(accuracy: float, **fields: object) -> dict:
    """A candidate whose four sources have labels, ``accuracy`` of them labelled as its class."""
    return candidate(source_accuracy=accuracy, labelled_sources=4, **fields)


@pytest.mark.parametrize(
    ("fields", "finding", "status"),
    [
        # Half its probes are labelled otherwise: it goes with the errors. A control that flips
        # (a region of a larger thing) is no reason to doubt while the paste flips more.
        ({"accuracy": 0.5, "control_flip_rate": 0.5}, "confirmed", "shortcut"),
        # A non-local cue: the control flips as much as the paste.
        ({"accuracy": 0.5, "control_flip_rate": 0.95}, None, "no shortcut"),
        # All its probes are labelled as its class: the object, or a shortcut the probes never break.
        ({"accuracy": 1.0}, "unresolved", "cannot tell"),
        # ... and its control flips too: what an object's region does.
        ({"accuracy": 1.0, "control_flip_rate": 0.5}, None, "no shortcut"),
        ({"accuracy": 0.5, "flip_rate": 0.05}, None, "no shortcut"),
    ],
)
def test_with_labels_a_shortcut_is_a_region_that_goes_with_the_models_errors(
    fields: dict, finding: str | None, status: str
) -> None:
    accuracy = fields.pop("accuracy")
    found = labelled(accuracy, **fields)
    assert candidate_finding(found, RULE, object_masks=False) == finding
    verdict = decide(evidence(found), RULE)
    assert verdict.status == status
    if status == "shortcut":
        assert "only 50% of the 4 labelled probes" in verdict.reasons[0]
    if status == "cannot tell":
        assert "may be the object itself" in verdict.not_checkable["discovery"]
    # Object masks settle it without labels: the default rule there has no label test.
    assert candidate_finding(found, RULE, object_masks=True) in ("confirmed", None)


def test_a_confirmed_candidate_outweighs_an_unresolved_one_and_no_labels_fall_back_to_the_control() -> None:
    verdict = decide(evidence(labelled(1.0), labelled(0.5, control_flip_rate=0.4)), RULE)
    assert verdict.status == "shortcut" and not verdict.not_checkable
    assert decide(evidence(candidate(source_accuracy=None)), RULE).status == "shortcut"
    no_label_test = AlertRule(discovery=DiscoveryThresholds(min_flip_rate=0.1, max_control_flip_rate=0.15))
    assert decide(evidence(labelled(1.0)), no_label_test).status == "shortcut"


def test_too_few_labels_fall_back_to_the_control_and_shares_at_a_threshold_count() -> None:
    # Two labelled sources: one label would move the share by half; too few to confirm anything.
    few = candidate(source_accuracy=0.5, labelled_sources=2)
    assert candidate_finding(few, RULE, object_masks=False) == "unresolved"
    verdict = decide(evidence(few), RULE)
    assert verdict.status == "cannot tell" and "only 2 of the probes" in verdict.not_checkable["discovery"]
    # No label at all (a NaN share): the control test decides.
    assert candidate_finding(candidate(source_accuracy=float("nan"), labelled_sources=4), RULE, False) == "confirmed"
    # 4 of 5 measured in float32 is 0.800000011920929: it is at a threshold of 0.8, not above it.
    at = AlertRule(discovery=DiscoveryThresholds(min_flip_rate=0.1, max_source_accuracy=0.8, min_flip_over_control=0.1))
    at_threshold = labelled(0.800000011920929, flip_rate=0.3, control_flip_rate=0.2)
    assert candidate_finding(at_threshold, at, object_masks=False) == "confirmed"
    # Above it, with no control limit set: unresolved.
    assert candidate_finding(labelled(0.81, flip_rate=0.3, control_flip_rate=0.2), at, False) == "unresolved"
    with pytest.raises(ValueError, match="min_labelled_sources"):
        DiscoveryThresholds(min_flip_rate=0.1, min_labelled_sources=0)
