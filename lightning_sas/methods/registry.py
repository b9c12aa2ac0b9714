"""The methods that can be named by string, and building one from its name and options."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.methods.gradientshap import GradientSHAP
from lightning_sas.methods.ig import IntegratedGradients
from lightning_sas.methods.lime import LIME
from lightning_sas.methods.occlusion import Occlusion
from lightning_sas.methods.saliency import Saliency
from lightning_sas.methods.sas import SaS
from lightning_sas.methods.smoothgrad import SmoothGrad

#: Methods that can be named by string (e.g. in ``SASAuditCallback(methods=("sas", "gradcam"))``).
METHODS: dict[str, type[AttributionMethod]] = {
    method.name: method
    for method in (SaS, GradCAM, IntegratedGradients, SmoothGrad, Occlusion, LIME, GradientSHAP, Saliency)
}


def method_options(name: str) -> list[str]:
    """The keyword options the method registered as ``name`` accepts.

    Example:
        >>> method_options("gradcam")
        ['target_layer', 'reshape']
    """
    parameters = list(inspect.signature(METHODS[name].__init__).parameters.values())[1:]  # without self
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [parameter.name for parameter in parameters if parameter.kind in keyword]


def make_method(name: str, options: Mapping[str, object] | None = None) -> AttributionMethod:
    """The method registered as ``name``, built with ``options`` (its constructor's keywords).

    Args:
        name: A key of :data:`METHODS`, e.g. ``"sas"``.
        options: Constructor keywords, e.g. ``{"steps": 64}``.

    Raises:
        ValueError: For an unknown name, an option the method does not take (the valid ones are
            listed), or a value the method refuses.

    Example:
        >>> make_method("ig", {"steps": 64}).passes_per_probe()
        64
    """
    if name not in METHODS:
        raise ValueError(f"unknown method name {name!r}; known names: {sorted(METHODS)}.")
    options = dict(options or {})
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid)}.")
    try:
        return METHODS[name](**options)
    except TypeError as error:
        raise ValueError(f"method {name!r}: {error}") from None
