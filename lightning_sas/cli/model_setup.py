"""The model side of the audit: ``--model`` imported, ``--output`` resolved, the checkpoint loaded and checked.

Each step turns expected problems into a one-line :class:`~lightning_sas.cli.errors.UsageError`
naming its option, and names itself (:func:`~lightning_sas.cli.errors.stage`) for anything
unexpected. torch and Lightning are imported inside the functions.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.errors import UsageError, stage
from lightning_sas.cli.model_import import SPEC_PATTERN, ModelLoadError

if TYPE_CHECKING:
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.cli.audit_inputs import AuditInputs
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.runtime.outputs import OutputSelector

#: Seed of shortcut discovery's transplants and clustering.
DISCOVERY_SEED = 0


@dataclass
class PreparedModel:
    """What every checkpoint of a job shares, ready before any is loaded."""

    model_class: type[LightningModule]
    #: Constructor arguments merged from the config file and ``--init-args``.
    init_args: dict[str, Any]
    output: OutputSelector
    methods: dict[str, AttributionMethod]
    device: torch.device
    discovery: DiscoveryOptions


def prepare_model(args: argparse.Namespace, inputs: AuditInputs, device: torch.device) -> PreparedModel:
    """Import ``--model``, merge its constructor arguments, resolve ``--output``, build the methods and
    discovery's options: everything but loading a checkpoint.

    Raises:
        UsageError: For any usage problem found on the way.
    """
    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.cli.checkpoint import merge_init_args
    from lightning_sas.cli.methods import build_methods, parse_discovery_config

    model_class = import_model(args.model)
    try:
        init_args = merge_init_args(model_class, inputs.init_args)
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    output = resolve_output(args.output)
    methods = build_methods(inputs.method_names, args.sas_iterations, args.gradcam_layer, args.method_config)
    try:
        settings = parse_discovery_config(args.discovery_config)
        discovery = DiscoveryOptions(args.discovery, args.discovery_method, DISCOVERY_SEED, settings)
    except ValueError as error:
        raise UsageError(f"--discovery-config: {error}") from None
    if args.discovery_method is not None and args.discovery_method not in methods:
        raise UsageError(f"--discovery-method {args.discovery_method} is not one of --methods ({', '.join(methods)}).")
    return PreparedModel(model_class, init_args, output, methods, device, discovery)


def resolve_job_device(args: argparse.Namespace) -> torch.device:
    """The one process's device: ``--device``, or ``--accelerator`` when only that is given.

    Raises:
        UsageError: If both name a device and disagree, or the device is not there.
    """
    accelerator = (args.accelerator or "").lower()
    if accelerator and accelerator != "auto" and args.device != "auto":
        raise UsageError(
            f"--device {args.device} and --accelerator {args.accelerator}: give one (--device for one process, "
            "--accelerator with --devices for several)."
        )
    if accelerator in ("cpu", "mps"):
        return resolve_device(accelerator)
    if accelerator in ("cuda", "gpu"):
        return resolve_device("cuda")
    return resolve_device(args.device)


__all__ = [
    "PreparedModel",
    "check_gradcam_layer",
    "check_model_output",
    "explained_layers",
    "import_model",
    "load_model",
    "prepare_model",
    "resolve_device",
    "resolve_job_device",
    "resolve_output",
]


def import_model(spec: str) -> type[LightningModule]:
    """``--model``: the ``LightningModule`` class named ``package.module:ClassName``.

    Raises:
        UsageError: If it cannot be imported or is no ``LightningModule`` subclass.
        StepFailure: If the user's module raises anything else while it is imported.
    """
    from lightning_sas.cli.checkpoint import import_model_class

    with stage(f"importing --model {spec}"):
        try:
            return import_model_class(spec)
        except ModelLoadError as error:
            raise UsageError(f"--model {error}") from None


def resolve_output(text: str | None) -> OutputSelector:
    """``--output``: an integer index, ``module:function`` (imported) or a dict key.

    Raises:
        UsageError: If ``module:function`` cannot be imported or is not callable.

    Example:
        >>> resolve_output("0"), resolve_output("-1"), resolve_output("logits"), resolve_output(None)
        (0, -1, 'logits', None)
    """
    from lightning_sas.cli.checkpoint import import_object

    if text is None:
        return None
    spec = text.strip()
    if re.fullmatch(r"[+-]?\d+", spec):
        return int(spec)
    if not re.fullmatch(SPEC_PATTERN, spec):
        return spec
    with stage(f"importing --output {spec}"):
        try:
            function = import_object(spec)
        except ModelLoadError as error:
            raise UsageError(f"--output {error}") from None
    if not callable(function):
        raise UsageError(f"--output {spec} is a {type(function).__name__}, not a callable taking the model's output.")
    return function


def load_model(
    model_class: type[LightningModule],
    args: argparse.Namespace,
    device: torch.device,
    init_args: dict[str, Any],
    checkpoint: Path,
    init_args_hint: str = "give it with --init-args NAME=VALUE or in the model: section of --config FILE.yaml",
) -> LightningModule:
    """``checkpoint`` (from ``--checkpoint``) loaded into ``model_class`` on ``device`` with the merged
    constructor arguments.

    Raises:
        UsageError: For a checkpoint that cannot be loaded (damaged, untrusted, weights that do not fit, ...).
        StepFailure: If the model's constructor or Lightning raises anything else.
    """
    from lightning_sas.cli.checkpoint import load_checkpoint

    with stage(f"loading --checkpoint {checkpoint} into {model_class.__name__}"):
        try:
            return load_checkpoint(
                model_class,
                checkpoint,
                device,
                trust=args.trust_checkpoint,
                trust_hint="re-run with --trust-checkpoint",
                init_args=init_args,
                init_args_hint=init_args_hint,
            )
        except ModelLoadError as error:
            raise UsageError(f"--checkpoint {error}") from None


def check_gradcam_layer(model: torch.nn.Module, methods: Mapping[str, AttributionMethod], given: str | None) -> None:
    """Look up Grad-CAM's ``target_layer`` in ``model`` before anything runs: a typo fails at once.

    Raises:
        UsageError: If the name is no module of ``model``, with the closest name (``given`` is
            ``--gradcam-layer``; another name came from ``--method-config``).
    """
    from lightning_sas.cli.checkpoint import check_module_name

    layer = getattr(methods.get("gradcam"), "target_layer", None)
    if isinstance(layer, str):
        try:
            check_module_name(model, layer)
        except ModelLoadError as error:
            option = f"--gradcam-layer {layer}" if layer == given else f"--method-config gradcam.target_layer={layer}"
            raise UsageError(f"{option}: {error}") from None


def explained_layers(
    model: torch.nn.Module, methods: Mapping[str, AttributionMethod], images: torch.Tensor, output: OutputSelector
) -> dict[str, dict[str, str]]:
    """``{"gradcam": {"layer": NAME}}``: the layer Grad-CAM explains, given or found as Grad-CAM finds it.

    Empty without Grad-CAM, or when no layer can be found (Grad-CAM then fails in the audit and says why).
    """
    from lightning_sas.methods.layers import find_target_layer
    from lightning_sas.runtime.outputs import ClassifierOutput

    if "gradcam" not in methods:
        return {}
    layer = getattr(methods["gradcam"], "target_layer", None)
    if layer is None:
        try:
            layer, _ = find_target_layer(ClassifierOutput.wrap(model, output), images)
        except ValueError:  # no spatial feature map: the audit records Grad-CAM's own error
            return {}
    return {"gradcam": {"layer": layer}} if isinstance(layer, str) else {}


def check_model_output(model: torch.nn.Module, images: torch.Tensor, output: OutputSelector, spec: str | None) -> int:
    """Forward the probes once and check that ``output`` finds class logits in what comes back.

    Returns:
        The number of classes (2 for a single binary logit).

    Raises:
        UsageError: If the (selected) output is not ``[N, C]`` logits or a single binary logit;
            the message names the output's type and shape and ``--output``.
        StepFailure: If the forward (or an ``--output`` function) raises.
    """
    import torch

    from lightning_sas.runtime.model_state import attribution_mode
    from lightning_sas.runtime.outputs import class_logits, describe_output

    shape = list(images.shape)
    with (
        stage(
            f"running the model on the probe images {shape}",
            hint="do --image-size, --channels and --mean/--std fit the model?",
        ),
        attribution_mode(model) as forward_module,
        torch.no_grad(),
    ):
        raw = forward_module(images)
    selected = _selected_output(raw, output, spec)
    try:
        return int(class_logits(selected, None, shape[0]).shape[1])
    except ValueError:
        if spec is None and isinstance(raw, torch.Tensor):
            advice = "pass --output module:function, a callable that turns it into logits"
        elif spec is None:
            advice = "pass --output INDEX, KEY or module:function to pick the logits"
        else:
            advice = "give another --output"
        given = f"--output {spec}" if spec is not None else "no --output"
        expected = f"class logits [{shape[0]}, num_classes] or one logit [{shape[0]}] / [{shape[0]}, 1] per image"
        raise UsageError(
            f"the model's output is {describe_output(selected)} with {given}, not {expected}; {advice}."
        ) from None


def _selected_output(raw: Any, output: OutputSelector, spec: str | None) -> Any:
    """What ``--output`` picks from the model's output ``raw`` (``raw`` itself without ``--output``).

    Raises:
        UsageError: If an index or key does not fit ``raw``.
        StepFailure: If an ``--output`` function raises.
    """
    from lightning_sas.runtime.outputs import describe_output, select_output

    if callable(output):
        # The user's function: whatever it raises is unexpected and needs its traceback.
        with stage(f"applying --output {spec} to the model's output ({describe_output(raw)})"):
            return output(raw)
    try:
        return select_output(raw, output)
    except ValueError:
        kind = "an index" if isinstance(output, int) else "a key"
        keys = f" (keys: {', '.join(map(str, raw))})" if isinstance(raw, Mapping) else ""
        raise UsageError(
            f"--output {spec} is {kind} that does not fit the model's output, {describe_output(raw)}{keys}."
        ) from None


def resolve_device(choice: str) -> torch.device:
    """``--device``: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        UsageError: If the device asked for is not there.
    """
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if choice == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: no Apple GPU (MPS) is available (use --device cpu or auto).")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {choice}: no CUDA device is available (use --device cpu or auto).")
    index = int(choice.partition(":")[2]) if ":" in choice else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {choice}: there are {torch.cuda.device_count()} CUDA devices (cuda:0..cuda:"
            f"{torch.cuda.device_count() - 1})."
        )
    return torch.device("cuda", index)
