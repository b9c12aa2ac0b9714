"""Trust in the loop: faithfulness scores, the sanity check and the intervention, through a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lit_models import corner_dataset
from test_callback import fit, read_events

from lightning_sas import SASAuditCallback
from lightning_sas.faithfulness import Faithfulness
from lightning_sas.intervention import Artifacts
from lightning_sas.sanity import ImageEdges


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
    assert len(flips) == 3 and flips[-1] > 0.25
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
    assert flips[-1] <= 0.25
    assert not any(item["criterion"] == "flip_rate" for alert in callback.alerts for item in alert["crossed"])
