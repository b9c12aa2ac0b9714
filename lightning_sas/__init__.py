"""lightning_sas: audit an image classifier while it trains, with Saliency-as-Schedule and Grad-CAM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["GradCAM", "SASAuditCallback", "SaS", "__version__"]

if TYPE_CHECKING:
    from lightning_sas.callback import SASAuditCallback
    from lightning_sas.methods import GradCAM, SaS

# Imported on first use (PEP 562), so `lightning-sas --help` does not pay for torch and Lightning.
_LAZY = {
    "SASAuditCallback": "lightning_sas.callback",
    "SaS": "lightning_sas.methods",
    "GradCAM": "lightning_sas.methods",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_sas' has no attribute {name!r}")
