"""Real single audits for the report tests: a trained ruler model, audited as the command line does.

:func:`write_audit` runs :func:`~lightning_sas.audit.run.run_audit` and the verdict, then writes
``summary.json`` (:func:`~lightning_sas.report.summary.build_summary`) and ``report.html``
(:func:`~lightning_sas.report.html.write_report`) the way ``lightning-sas audit`` does, without the
command line's argument parsing, so the summaries are the real thing at a fraction of the cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, ruler_images, ruler_mask, train_quickly

from lightning_sas import GradCAM, SaS
from lightning_sas.audit.discovery import DiscoveryOptions
from lightning_sas.audit.run import run_audit
from lightning_sas.audit.verdict import AlertRule, decide
from lightning_sas.probes.probe_set import Probes
from lightning_sas.report import html
from lightning_sas.report.summary import build_summary, write_summary
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts

CLASS_NAMES = ("clean", "ruler")
#: Few steps (cheap); the black baseline takes the ruler away, which the blur only softens.
FAITHFULNESS = Faithfulness(steps=8, baseline="zero")
#: A probe name that is markup: the reports must escape it.
HTML_NAME = '<b>probe</b>&"q.png'


def ruler_model(steps: int, seed: int = 0) -> LitClassifier:
    """A LitClassifier after ``steps`` Adam steps on ruler images (0: its initial weights)."""
    torch.manual_seed(seed)
    model = LitClassifier(lr=0.02)
    return train_quickly(model, steps=steps, seed=seed) if steps else model.eval()


def ruler_probes(count: int = 8, *, masks: bool = True, long_names: bool = False) -> Probes:
    """``count`` ruler probes (every other one has the ruler, and its mask when ``masks``).

    With ``long_names``, the file names are long and one is markup (:data:`HTML_NAME`).
    """
    images, labels = ruler_images(count, seed=1)
    roi = torch.zeros(count, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    if masks:
        roi[labels == 1] = ruler_mask()
    stem = "dermoscopy_2024-03-17_clinic-north_patient-000{}_lesion-left-forearm_crop.png"
    names = [stem.format(index) if long_names else f"probe_{index}.png" for index in range(count)]
    if long_names:
        names[2] = HTML_NAME
    return Probes(images=images, labels=labels, roi=roi, names=names)


def write_audit(
    model: LitClassifier,
    probes: Probes,
    out: Path,
    *,
    checkpoint: str,
    faithfulness: Faithfulness | None = FAITHFULNESS,
    artifacts: bool = False,
    discovery: bool = False,
) -> dict:
    """Audit ``model`` on ``probes`` with SaS and Grad-CAM; write ``summary.json`` and ``report.html`` to ``out``.

    Args:
        model: The classifier.
        probes: The probes.
        out: The audit's folder (created).
        checkpoint: What the summary names as the checkpoint.
        faithfulness: The deletion / insertion curves' settings; ``None``: not measured.
        artifacts: Paste the ruler (class 1) onto the probes: the intervention's flip rate.
        discovery: Look for shortcuts nobody named in Grad-CAM's maps (needs 16 probes).

    Returns:
        The summary, as read back from ``summary.json``.
    """
    rule = AlertRule()
    pasted = None
    if artifacts:
        rulers = torch.ones(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        pasted = Artifacts(target_class=1, patches=rulers, masks=ruler_mask()[None], trials=2)
    options = DiscoveryOptions(when="always", method="gradcam", settings={"trials": 4}) if discovery else None
    methods = {"sas": SaS(iterations=3, num_masks=4, objective="scale_free"), "gradcam": GradCAM()}
    result = run_audit(model, probes, methods, discovery=options, faithfulness=faithfulness, artifacts=pasted)
    verdict = decide(result.evidence(), rule)
    run = {"checkpoint": checkpoint, "model": "lit_classifier:LitClassifier", "model_class": "LitClassifier"}
    summary = build_summary(
        result,
        probes,
        skipped=[],
        file_hashes=["0" * 64] * len(probes),
        verdict=verdict,
        rule=rule,
        class_names=CLASS_NAMES,
        run={**run, "device": "cpu", "image_size": [IMAGE_SIZE, IMAGE_SIZE], "command": ["test"]},
        faithfulness=faithfulness,
        artifacts={"folder": "rulers", "files": ["ruler.png"], "trials": 2, "seed": 0} if artifacts else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out / "summary.json")
    html.write_report(summary, html.probe_pictures(result, probes, mean=None, std=None), out / "report.html")
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))
