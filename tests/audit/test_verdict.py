"""The shared alert rule: a pure function of an audit's evidence, right or saying it cannot tell."""

from __future__ import annotations

import math

import pytest
import torch
from models import RectangleModel, SmallCNN, box_mask
from torch import nn

from lightning_sas.audit.run import run_audit
from lightning_sas.audit.verdict import (
    DEFAULT_MIN_FLIP_RATE,
    DEFAULT_MIN_ROI_PIXELS,
    AlertRule,
    Evidence,
    decide,
)
from lightning_sas.methods import GradCAM, Saliency
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes.probe_set import Probes
from lightning_sas.trust.intervention import Artifacts

PIXELS = 32 * 32


def evidence(shares: dict[str, list[float]], roi_pixels: list[int], **kwargs) -> Evidence:
    return Evidence(image_pixels=PIXELS, roi_pixels=roi_pixels, roi_share=shares, **kwargs)


def test_enrichment_can_fire_at_any_roi_size() -> None:
    """An ROI over a quarter of the image: the old lift could never exceed 4 (< its threshold 8)."""
    quarter = PIXELS // 4
    verdict = decide(evidence({"sas": [1.0, 0.9]}, [quarter, quarter]), AlertRule())
    assert verdict.status == "shortcut" and verdict.crossed == [("roi_enrichment", "sas")]
    assert verdict.scores["sas"]["roi_enrichment"] == pytest.approx((1.9 * quarter - 2 * quarter / 4) / (1.5 * quarter))
    # Its chance level (share 0.25) is enrichment 0: no alert, and "checked", rightly.
    calm = decide(evidence({"sas": [0.25, 0.25]}, [quarter, quarter]), AlertRule())
    assert calm.status == "no shortcut" and calm.checked == ["roi_enrichment"]
    assert calm.scores["sas"]["roi_enrichment"] == pytest.approx(0.0, abs=1e-6)


def test_one_small_roi_cannot_decide_the_pooled_statistic() -> None:
    """A mean of per-probe ratios lets one probe with a tiny ROI push the mean over the threshold."""
    shares = {"sas": [1.0] + [0.05] * 7}  # one 12-pixel ROI hit exactly; seven 60-pixel ROIs at chance
    pixels = [12] + [60] * 7
    verdict = decide(evidence(shares, pixels), AlertRule())
    assert verdict.status == "no shortcut"
    assert verdict.scores["sas"]["roi_enrichment"] < 0.1
    lift_mean = sum(s / (n / PIXELS) for s, n in zip(shares["sas"], pixels, strict=True)) / len(pixels)
    assert lift_mean > 8  # the old statistic would have alerted on this single probe


def test_rois_below_the_minimum_size_are_not_checkable_never_passed() -> None:
    verdict = decide(evidence({"sas": [1.0, 1.0]}, [4, 6]), AlertRule())
    assert verdict.status == "cannot tell" and not verdict.checked
    assert f"smaller than {DEFAULT_MIN_ROI_PIXELS} pixels" in verdict.not_checkable["roi_enrichment"]
    assert verdict.summary().startswith("cannot tell: every probe's ROI is empty or smaller")
    # Lowering the minimum makes them count.
    assert decide(evidence({"sas": [1.0, 1.0]}, [4, 6]), AlertRule(min_roi_pixels=4)).alert


def test_a_method_that_fails_the_sanity_check_does_not_vote() -> None:
    shares = {"sas": [0.05, 0.05], "edges": [1.0, 1.0]}
    assert decide(evidence(shares, [50, 50]), AlertRule()).crossed == [("roi_enrichment", "edges")]
    verdict = decide(evidence(shares, [50, 50], sanity_flagged=("edges",)), AlertRule())
    assert verdict.status == "no shortcut" and "sanity check" in verdict.excluded["edges"]
    assert set(verdict.scores) == {"sas"}
    # If every method is flagged, the ROIs cannot be checked: never "no shortcut".
    alone = decide(evidence({"edges": [1.0, 1.0]}, [50, 50], sanity_flagged=("edges",)), AlertRule())
    assert alone.status == "cannot tell" and "edges" in alone.not_checkable["roi_enrichment"]


def test_voters_restrict_the_methods_that_vote() -> None:
    shares = {"sas": [0.05, 0.05], "lime": [1.0, 1.0]}
    verdict = decide(evidence(shares, [50, 50]), AlertRule(voters=("sas",)))
    assert not verdict.alert and verdict.excluded == {"lime": "not one of the rule's voters"}


def test_flat_maps_are_no_evidence() -> None:
    nan = math.nan
    verdict = decide(evidence({"gradcam": [nan, nan]}, [50, 50], flat={"gradcam": [True, True]}), AlertRule())
    assert verdict.status == "cannot tell" and "flat (no evidence)" in verdict.excluded["gradcam"]


def test_every_probe_predicted_as_the_artifact_class_is_never_silent() -> None:
    verdict = decide(evidence({}, [0, 0], flip_rate=math.nan, eligible_probes=0, artifact_class=1), AlertRule())
    assert verdict.status == "cannot tell" and not verdict.alert
    assert "already predicted as the artifact's class 1" in verdict.not_checkable["flip_rate"]
    # A map criterion that fires is not hidden by it.
    fired = decide(
        evidence({"sas": [1.0, 1.0]}, [50, 50], flip_rate=math.nan, eligible_probes=0, artifact_class=1), AlertRule()
    )
    assert fired.status == "shortcut" and "flip_rate" in fired.not_checkable


def test_intervention_alerts_without_any_roi() -> None:
    verdict = decide(evidence({}, [0], flip_rate=DEFAULT_MIN_FLIP_RATE + 0.5, eligible_probes=4), AlertRule())
    assert verdict.alert and verdict.crossed == [("flip_rate", None)]
    assert f"flip_rate {DEFAULT_MIN_FLIP_RATE + 0.5:.2f} > {DEFAULT_MIN_FLIP_RATE:g}" in verdict.reasons[0]


def test_quiet_audit_says_what_it_checked() -> None:
    verdict = decide(evidence({"sas": [0.1, 0.1]}, [50, 50], flip_rate=0.0, eligible_probes=2), AlertRule())
    assert verdict.status == "no shortcut" and verdict.checked == ["roi_enrichment", "flip_rate"]
    assert verdict.summary() == "no shortcut criterion crossed (checked: roi_enrichment, flip_rate)"


def test_nothing_to_check_is_not_a_pass() -> None:
    verdict = decide(evidence({"sas": [math.nan]}, [0]), AlertRule())
    assert verdict.status == "cannot tell" and verdict.checked == [] and not verdict.not_checkable
    assert verdict.summary().startswith("nothing to check")


def test_a_model_whose_output_ignores_its_input_never_alerts() -> None:
    verdict = decide(
        evidence({"sas": [1.0, 1.0]}, [50, 50], flip_rate=1.0, eligible_probes=2, input_independent=True), AlertRule()
    )
    assert verdict.status == "cannot tell" and not verdict.alert and not verdict.crossed
    assert "same output" in verdict.not_checkable["model"]


def test_absolute_roi_share_threshold_for_users_who_set_it() -> None:
    shares = {"gradcam": [0.6, 0.6]}
    assert not decide(evidence(shares, [500, 500]), AlertRule()).alert
    verdict = decide(evidence(shares, [500, 500]), AlertRule(max_roi_share=0.5))
    assert verdict.crossed == [("roi_share", "gradcam")] and "roi_share 0.60 > 0.5" in verdict.reasons[0]


def test_an_roi_over_the_whole_image_cannot_be_enriched_but_its_share_is_checked() -> None:
    verdict = decide(evidence({"gradcam": [1.0, 1.0]}, [PIXELS, PIXELS]), AlertRule(max_roi_share=0.5))
    assert "covers the whole image" in verdict.not_checkable["roi_enrichment"]
    assert verdict.checked == ["roi_share"] and verdict.crossed == [("roi_share", "gradcam")]
    assert verdict.status == "shortcut"


def test_criteria_switched_off() -> None:
    off = AlertRule(min_enrichment=None, min_flip_rate=None)
    verdict = decide(evidence({"sas": [1.0]}, [50], flip_rate=1.0, eligible_probes=1), off)
    assert not verdict.alert and verdict.status == "cannot tell" and not verdict.checked


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_enrichment": 1.5}, r"`min_enrichment` must be a number in \[0, 1\] or None, got 1.5"),
        ({"min_flip_rate": 1.5}, r"`min_flip_rate` must be a number in \[0, 1\]"),
        ({"max_roi_share": "high"}, "`max_roi_share` must be a number"),
        ({"min_roi_pixels": 0}, "`min_roi_pixels` must be an integer >= 1, got 0"),
        ({"voters": "sas"}, "`voters` must be a sequence of method names"),
    ],
)
def test_bad_thresholds(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertRule(**kwargs)


# ----------------------------------------------------------------- from a real audit


class Constant(nn.Module):
    """A collapsed classifier: the same logits whatever the input (dead units)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(images) * 0.0 - 1.0)  # always 0: nothing reaches the head
        return self.head(features.mean(dim=(2, 3)))


class ZeroMaps(AttributionMethod):
    """A method that returns all-zero maps (as Grad-CAM does when every weight is negative)."""

    name = "zeros"

    def _attribute(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], *images.shape[-2:], device=images.device)


def probes_with_roi(count: int = 4, size: int = 32) -> Probes:
    box = (4, 14, 4, 14)
    roi = box_mask(size, box).expand(count, -1, -1).clone()
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    return Probes(
        images, torch.zeros(count, dtype=torch.long), roi, [f"p{i}" for i in range(count)], list(range(count))
    )


def test_a_collapsed_model_is_detected_from_the_audit_and_never_alerts() -> None:
    probes = probes_with_roi()
    result = run_audit(Constant().eval(), probes, {"saliency": Saliency()})
    assert result.input_independent()
    verdict = decide(result.evidence(), AlertRule(min_enrichment=0.0))
    assert verdict.status == "cannot tell" and not verdict.alert
    # A real model is not mistaken for a collapsed one.
    assert not run_audit(SmallCNN(num_classes=2).eval(), probes, {"saliency": Saliency()}).input_independent()


def test_flat_maps_are_flagged_excluded_and_named() -> None:
    from lightning_sas.audit.run import problems

    probes = probes_with_roi()
    result = run_audit(SmallCNN(num_classes=2).eval(), probes, {"zeros": ZeroMaps(), "gradcam": GradCAM()})
    assert result.flat["zeros"] == [0, 1, 2, 3]
    assert bool(torch.isnan(result.roi_share["zeros"]).all()) and "zeros" not in result.mean_scores()
    assert any(
        "zeros: no evidence (a flat, constant map) for 4 probe(s): p0, p1, p2, p3" in line
        for line in problems(result, probes.names)
    )
    verdict = decide(result.evidence(), AlertRule())
    assert "flat" in verdict.excluded["zeros"] and "gradcam" in verdict.scores


def test_the_default_rule_alerts_on_a_model_that_reads_only_the_roi() -> None:
    """Ground truth: logits depend only on the ROI, so every map puts its top pixels there."""
    size, box = 32, (4, 14, 4, 14)
    probes = probes_with_roi(2, size)
    result = run_audit(RectangleModel(size, box), probes, {"saliency": Saliency()})
    verdict = decide(result.evidence(), AlertRule())
    assert verdict.alert
    assert verdict.scores["saliency"]["roi_enrichment"] > AlertRule().enrichment_threshold("saliency")


class AlwaysClassOne(nn.Module):
    """Predicts class 1 for every input (its logits still depend on the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = SmallCNN(num_classes=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.base(images) + torch.tensor([0.0, 100.0])


def test_an_artifact_class_predicted_everywhere_says_so() -> None:
    probes = probes_with_roi()
    artifacts = Artifacts(target_class=1, patches=torch.ones(1, 3, 4, 4), masks=torch.ones(1, 4, 4))
    result = run_audit(AlwaysClassOne().eval(), probes, {"saliency": Saliency()}, artifacts=artifacts)
    assert not result.input_independent() and not bool(result.intervention.eligible.any())
    verdict = decide(result.evidence(), AlertRule(min_enrichment=None))
    assert verdict.status == "cannot tell" and "already predicted as the artifact's class 1" in verdict.summary()
