"""The attribution methods of an audit, built from ``--methods``, ``--method-config`` and their shorthands."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_sas.cli.errors import UsageError

if TYPE_CHECKING:
    from lightning_sas.methods import AttributionMethod

__all__ = ["build_methods", "parse_method_config"]


def parse_method_config(entries: Sequence[str]) -> dict[str, dict[str, object]]:
    """``["sas.iterations=30", "ig.rule=gausslegendre"]`` -> ``{"sas": {"iterations": 30}, "ig": {...}}``.

    A value is read as a Python literal (``30``, ``0.5``, ``True``, ``None``, ``(8, 8)``), then as a
    torch dtype (``torch.bfloat16``), and is otherwise kept as text (``layer4``).

    Raises:
        UsageError: For an entry that is not ``METHOD.KEY=VALUE`` or a key given twice.

    Example:
        >>> parse_method_config(["sas.iterations=30", "gradcam.target_layer=layer4"])
        {'sas': {'iterations': 30}, 'gradcam': {'target_layer': 'layer4'}}
    """
    configs: dict[str, dict[str, object]] = {}
    for entry in entries:
        key, equals, text = entry.partition("=")
        method, dot, option = key.strip().partition(".")
        if not (equals and dot and method and option.isidentifier()):
            raise UsageError(
                f"--method-config {entry!r}: expected METHOD.KEY=VALUE, e.g. --method-config sas.iterations=30."
            )
        if option in configs.setdefault(method, {}):
            raise UsageError(f"--method-config {entry!r}: {method}.{option} is given twice.")
        configs[method][option] = _config_value(text.strip())
    return configs


def parse_discovery_config(entries: Sequence[str]) -> dict[str, object]:
    """``["completion=True", "trials=8"]`` -> ``{"completion": True, "trials": 8}`` (values as in
    :func:`parse_method_config`).

    Raises:
        UsageError: For an entry that is not ``KEY=VALUE`` or a key given twice.
    """
    settings: dict[str, object] = {}
    for entry in entries:
        key, equals, text = entry.partition("=")
        if not (equals and key.strip().isidentifier()) or key.strip() in settings:
            raise UsageError(f"--discovery-config {entry!r}: expected KEY=VALUE once per key, e.g. trials=8.")
        settings[key.strip()] = _config_value(text.strip())
    return settings


def _config_value(text: str) -> object:
    """A ``--method-config`` value: a Python literal, else a torch dtype, else the text itself."""
    import torch

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    dtype = getattr(torch, text.removeprefix("torch."), None)
    return dtype if isinstance(dtype, torch.dtype) else text


def build_methods(
    names: Sequence[str],
    sas_iterations: int | None = None,
    gradcam_layer: str | None = None,
    method_config: Sequence[str] = (),
) -> dict[str, AttributionMethod]:
    """Method objects by name, with the command line's options (``--method-config`` and shorthands).

    Raises:
        UsageError: For an unknown or repeated method name, an option for a method not in
            ``--methods``, an option the method does not take, or a value it refuses.
    """
    from lightning_sas.audit.run import resolve_methods
    from lightning_sas.methods import make_method

    configs = parse_method_config(method_config)
    unused = sorted(set(configs) - set(names))
    if unused:
        raise UsageError(
            f"--method-config names {unused[0]!r}, which is not in --methods {','.join(names)}; "
            f"add it to --methods or drop the option."
        )
    # The shorthands set one option each; an explicit --method-config for the same key wins.
    for method, option, value in (("sas", "iterations", sas_iterations), ("gradcam", "target_layer", gradcam_layer)):
        if value is not None and method in names:
            configs.setdefault(method, {}).setdefault(option, value)
    try:
        return resolve_methods([make_method(name, configs.get(name)) for name in names])
    except (ValueError, TypeError) as error:
        raise UsageError(f"--methods/--method-config: {error}") from None
