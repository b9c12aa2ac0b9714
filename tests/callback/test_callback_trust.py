"""Trust in the loop: faithfulness scores, the sanity check and the intervention, through a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lit_models import corner_dataset
from test_callback import fit, read_events

from lightning_sas import SASAuditCallback
from lightning_sas.audit.verdict import DEFAULT_MIN_FLIP_RATE, AlertRule
from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts
from lightning_sas.trust.sanity import ImageEdges


def texts(trainer, tag: str) -> list[str]:
    events = read_events(trainer.logger.log_dir)
    return [event.tensor_proto.string_val[0].decode() for event in events.Tensors(f"{tag}/text_summary")]


def test_faithfulness_scores_are_logged_every_audit(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], faithfulness=Faithfulness(steps=4), sanity=False)
    trainer, _ = fit(tmp_path, callback, max_epochs=2)
    events = read_events(trainer.logger.log_dir)
    for name in ("deletion_auc", "insertion_auc", "insertion_minus_deletion"):
        values = [event.value for event in events.Scalars(f"audit/gradcam/{name}")]
        assert len(values) == 2 and all(math.isfinite(value) for value in values), name
    deletion = events.Scalars("audit/gradcam/deletion_auc")[-1].value
    insertion = events.Scalars("audit/gradcam/insertion_auc")[-1].value
    assert events.Scalars("audit/gradcam/insertion_minus_deletion")[-1].value == pytest.approx(
        insertion - deletion, abs=1e-6
    )
    off = SASAuditCallback(probe=2, methods=["gradcam"], faithfulness=False, sanity=False)
    trainer, _ = fit(tmp_path / "off", off, max_epochs=1)
    assert not any("auc" in tag for tag in read_events(trainer.logger.log_dir).Tags()["scalars"])


def test_sanity_check_flags_a_method_that_ignores_the_weights_once_per_fit(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=[ImageEdges(), "gradcam"], sanity=2, faithfulness=False)
    with pytest.warns(UserWarning, match=r"sanity check: the maps of edges do not depend on the model's weights"):
        trainer, _ = fit(tmp_path, callback, max_epochs=2)
    assert callback.sanity is not None and callback.sanity["epoch"] == 0
    assert callback.sanity["flagged"] == ["edges"] and callback.sanity["similarity"]["edges"] == [1.0, 1.0]
    events = read_events(trainer.logger.log_dir)
    assert [event.step for event in events.Scalars("audit/edges/sanity_similarity")] == [3]  # the first audit only
    assert "do not depend on the model's weights" in texts(trainer, "audit/sanity")[0]
    assert callback.state_dict()["sanity"] == callback.sanity


def bright_corner_artifacts(**kwargs) -> Artifacts:
    """The corner task's own shortcut: a bright top-left square (class 1), cut as full-size examples."""
    images, labels, roi = corner_dataset().tensors
    keep = labels == 1
    return Artifacts(target_class=1, patches=images[keep][:8], masks=roi[keep][:8] > 0, **kwargs)


def test_intervention_is_logged_and_drives_the_alert(tmp_path: Path) -> None:
    callback = SASAuditCallback(
        probe=8, methods=["gradcam"], artifacts=bright_corner_artifacts(trials=2), sanity=False, faithfulness=False
    )
    with pytest.warns(UserWarning, match=r"Shortcut alert at epoch \d+: .*pasting the artifact moves"):
        trainer, _ = fit(tmp_path, callback, max_epochs=3)
    flips = [event.value for event in read_events(trainer.logger.log_dir).Scalars("audit/intervention/flip_rate")]
    assert len(flips) == 3 and flips[-1] > DEFAULT_MIN_FLIP_RATE
    assert any({"criterion": "flip_rate", "method": None} in alert["crossed"] for alert in callback.alerts)


def test_an_artifact_the_model_ignores_does_not_alert(tmp_path: Path) -> None:
    # A dark square in the opposite corner: nothing the corner task's model learned to use.
    patches = torch.full((2, 3, 16, 16), -1.5)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 12:, 12:] = True
    artifacts = Artifacts(target_class=1, patches=patches, masks=masks, trials=2)
    callback = SASAuditCallback(probe=8, methods=["gradcam"], artifacts=artifacts, sanity=False, faithfulness=False)
    trainer, _ = fit(tmp_path, callback, max_epochs=3)
    flips = [event.value for event in read_events(trainer.logger.log_dir).Scalars("audit/intervention/flip_rate")]
    assert flips[-1] <= DEFAULT_MIN_FLIP_RATE
    assert not any(item["criterion"] == "flip_rate" for alert in callback.alerts for item in alert["crossed"])


class Brightness(AttributionMethod):
    """A map of each pixel's brightness: it lights up on the bright square (the ROI) whatever the weights."""

    name = "brightness"

    def _attribute(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return minmax_normalize(images.mean(dim=1))


def test_a_method_the_sanity_check_flags_does_not_vote(tmp_path: Path) -> None:
    """Without the sanity check the brightness maps alert; with it they are flagged, do not vote,
    and the audit says it cannot tell (the only method), in a warning and in TensorBoard."""
    rule = AlertRule(min_enrichment=0.2)
    unchecked = SASAuditCallback(probe=8, methods=[Brightness()], sanity=False, faithfulness=False, alert_rule=rule)
    fit(tmp_path / "unchecked", unchecked, max_epochs=1)
    assert unchecked.alerts[0]["crossed"] == [{"criterion": "roi_enrichment", "method": "brightness"}]

    checked = SASAuditCallback(probe=8, methods=[Brightness()], sanity=2, faithfulness=False, alert_rule=rule)
    with pytest.warns(UserWarning, match=r"cannot tell whether the model uses a shortcut: no method could vote"):
        trainer, _ = fit(tmp_path / "checked", checked, max_epochs=1)
    assert checked.sanity["flagged"] == ["brightness"] and checked.alerts == []
    verdict = checked.verdicts[0]
    assert verdict["status"] == "cannot tell" and "sanity check" in verdict["excluded"]["brightness"]
    assert "cannot tell" in texts(trainer, "audit/verdict")[0]
