"""Attribution methods: ``method.attribute(model, images, targets) -> Tensor[B, H, W]`` in [0, 1]."""

from __future__ import annotations

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.methods.gradientshap import GradientSHAP
from lightning_sas.methods.ig import IntegratedGradients
from lightning_sas.methods.lime import LIME
from lightning_sas.methods.occlusion import Occlusion
from lightning_sas.methods.registry import METHODS, make_method, method_options
from lightning_sas.methods.saliency import Saliency
from lightning_sas.methods.sas import SaS
from lightning_sas.methods.smoothgrad import SmoothGrad

__all__ = [
    "LIME",
    "METHODS",
    "AttributionMethod",
    "GradCAM",
    "GradientSHAP",
    "IntegratedGradients",
    "Occlusion",
    "SaS",
    "Saliency",
    "SmoothGrad",
    "make_method",
    "method_options",
]
