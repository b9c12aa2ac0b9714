"""lightning_sas: audit an image classifier while it trains: SaS, Grad-CAM and the field's other attribution methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AlertRule",
    "Artifacts",
    "ClassifierOutput",
    "Faithfulness",
    "GradCAM",
    "GradientSHAP",
    "IntegratedGradients",
    "LIME",
    "Occlusion",
    "ProbeFolderDataset",
    "SASAuditCallback",
    "SaS",
    "Saliency",
    "SmoothGrad",
    "__version__",
]

if TYPE_CHECKING:
    from lightning_sas.audit.verdict import AlertRule
    from lightning_sas.callback.audit_callback import SASAuditCallback
    from lightning_sas.methods import (
        LIME,
        GradCAM,
        GradientSHAP,
        IntegratedGradients,
        Occlusion,
        Saliency,
        SaS,
        SmoothGrad,
    )
    from lightning_sas.probes.folder_dataset import ProbeFolderDataset
    from lightning_sas.runtime.outputs import ClassifierOutput
    from lightning_sas.scores.faithfulness import Faithfulness
    from lightning_sas.trust.intervention import Artifacts

# Imported on first use (PEP 562), so `lightning-sas --help` does not pay for torch and Lightning.
_LAZY = {
    "SASAuditCallback": "lightning_sas.callback.audit_callback",
    **{
        method: "lightning_sas.methods"
        for method in (
            "SaS",
            "GradCAM",
            "IntegratedGradients",
            "SmoothGrad",
            "Occlusion",
            "LIME",
            "GradientSHAP",
            "Saliency",
        )
    },
    "AlertRule": "lightning_sas.audit.verdict",
    "Artifacts": "lightning_sas.trust.intervention",
    "ProbeFolderDataset": "lightning_sas.probes.folder_dataset",
    "ClassifierOutput": "lightning_sas.runtime.outputs",
    "Faithfulness": "lightning_sas.scores.faithfulness",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_sas' has no attribute {name!r}")
