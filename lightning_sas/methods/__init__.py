"""Attribution methods: ``method.attribute(model, images, targets) -> Tensor[B, H, W]`` in [0, 1]."""

from __future__ import annotations

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.methods.sas import SaS

#: Methods that can be named by string (e.g. in ``SASAuditCallback(methods=("sas", "gradcam"))``).
METHODS: dict[str, type[AttributionMethod]] = {"sas": SaS, "gradcam": GradCAM}

__all__ = ["METHODS", "AttributionMethod", "GradCAM", "SaS"]
