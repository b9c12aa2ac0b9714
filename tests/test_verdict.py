"""The shared alert rule: a pure function of an audit's scores."""

from __future__ import annotations

import math

import pytest

from lightning_sas.verdict import DEFAULT_MIN_FLIP_RATE, DEFAULT_MIN_LIFT, AlertRule, decide


def test_lift_over_chance_alerts_per_method() -> None:
    verdict = decide(
        {"sas": {"roi_share": 0.4, "roi_lift": DEFAULT_MIN_LIFT + 1}, "gradcam": {"roi_share": 0.1, "roi_lift": 2.0}},
        AlertRule(),
    )
    assert verdict.alert and verdict.crossed == [("roi_lift", "sas")]
    assert verdict.checked == ["roi_lift"] and "sas puts 9.0x chance" in verdict.reasons[0]


def test_quiet_audit_says_what_it_checked() -> None:
    verdict = decide({"sas": {"roi_share": 0.9, "roi_lift": 2.0}}, AlertRule(), flip_rate=0.0)
    assert not verdict and verdict.checked == ["roi_lift", "flip_rate"]
    assert verdict.summary() == "no shortcut criterion crossed (checked: roi_lift, flip_rate)"


def test_intervention_alerts_without_any_roi() -> None:
    verdict = decide({}, AlertRule(), flip_rate=DEFAULT_MIN_FLIP_RATE + 0.5)
    assert verdict.alert and verdict.crossed == [("flip_rate", None)]
    assert "flip_rate 0.75 > 0.25" in verdict.reasons[0]


def test_nothing_to_check_is_not_a_pass() -> None:
    verdict = decide({"sas": {"roi_share": math.nan, "roi_lift": math.nan}}, AlertRule(), flip_rate=math.nan)
    assert not verdict.alert and verdict.checked == []
    assert verdict.summary().startswith("nothing to check")


def test_absolute_roi_share_threshold_for_users_who_set_it() -> None:
    scores = {"gradcam": {"roi_share": 0.6, "roi_lift": 1.2}}
    assert not decide(scores, AlertRule())
    verdict = decide(scores, AlertRule(max_roi_share=0.5))
    assert verdict.crossed == [("roi_share", "gradcam")] and "roi_share 0.60 > 0.5" in verdict.reasons[0]


def test_criteria_switched_off() -> None:
    scores = {"sas": {"roi_share": 0.9, "roi_lift": 50.0}}
    assert not decide(scores, AlertRule(min_lift=None, min_flip_rate=None), flip_rate=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lift": 0.5}, r"`min_lift` must be a number in \[1.0, inf\] or None, got 0.5"),
        ({"min_flip_rate": 1.5}, r"`min_flip_rate` must be a number in \[0.0, 1.0\]"),
        ({"max_roi_share": "high"}, "`max_roi_share` must be a number"),
    ],
)
def test_bad_thresholds(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertRule(**kwargs)
