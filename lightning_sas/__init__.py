"""lightning_sas: audit an image classifier while it trains, with Saliency-as-Schedule and Grad-CAM."""

from __future__ import annotations

from lightning_sas.callback import SASAuditCallback
from lightning_sas.methods import GradCAM, SaS

__version__ = "0.1.0"

__all__ = ["GradCAM", "SASAuditCallback", "SaS", "__version__"]
