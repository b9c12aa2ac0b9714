"""One YAML file for training and the nightly audit: the callback built from the command line's ``audit:`` section.

``lightning-sas audit --config job.yaml`` reads its options from the file's ``audit:`` section
(:mod:`lightning_sas.cli.job_file`). :meth:`SASAuditCallback.from_config
<lightning_sas.callback.audit_callback.SASAuditCallback.from_config>` reads the same section with
the command line's own parser (the same names, values, defaults and checks), so the callback
trains with the probe set, methods and rule the nightly audit uses::

    audit:
      checkpoint: runs/last.ckpt          # the command line's only
      model: my_project.models:LesionClassifier
      probe: probes/images                # -> probe=ProbeFolderDataset(probes/images, ...)
      masks: probes/masks
      labels: probes/labels.csv
      class-names: [benign, malignant]
      image-size: 224
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      methods: [sas, gradcam]             # -> methods= (with method-config, sas-iterations, ...)
      min-enrichment: 0.3                 # -> alert_rule=
      probes-from-checkpoint: true        # the command line's only: audit what the callback recorded
      out: audits/nightly
    callback:                             # the callback's own arguments; the command line ignores it
      every-n-epochs: 2
      name: audit

Where each ``audit:`` key goes is one table, :data:`SHARED`: per callback argument, the options
of ``lightning-sas audit`` it is built from. Every other option is the command line's only
(``checkpoint``, ``model``, ``out``, ``device``, ``baseline``, ``probes-from-checkpoint``, ...)
and the callback ignores it. The ``callback:`` section takes the callback's other arguments
(those :data:`SHARED` does not build: ``every-n-epochs``, ``name``, ``probe-count``, ``seed``,
``on-error``, ``stop-on-shortcut``, ...), spelled with dashes or underscores; a shared one there
is refused (give it in ``audit:``, where both read it). Absent options take the command line's
defaults, so the file means the same for both (the sanity check is off unless ``sanity: true``,
faithfulness on with 20 steps). Relative paths are relative to the working directory, as on the
command line.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_sas.cli.errors import UsageError
from lightning_sas.cli.options import name_list

__all__ = ["CALLBACK_SECTION", "SHARED", "Shared", "callback_arguments", "callback_only_arguments"]

#: The job file's section of the callback's own arguments.
CALLBACK_SECTION = "callback"


@dataclass(frozen=True)
class Shared:
    """A callback argument built from options of ``lightning-sas audit`` (their ``argparse`` names).

    Attributes:
        options: The options it is built from.
        build: ``build(options, arguments built so far) -> the argument's value``.
    """

    options: tuple[str, ...]
    build: Callable[[argparse.Namespace, Mapping[str, Any]], Any]


def _probe(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.cli.audit_inputs import read_normalization
    from lightning_sas.cli.options import parse_image_size
    from lightning_sas.probes.folder_dataset import ProbeFolderDataset

    if args.probe is None:
        raise ValueError("it names no probe folder (probe: DIR), where the callback's probes come from.")
    mean, std = read_normalization(args)
    return ProbeFolderDataset(
        args.probe,
        masks=args.masks,
        object_masks=args.object_masks,
        labels=args.labels,
        class_names=name_list(args.class_names),
        image_size=parse_image_size(args.image_size),
        channels=args.channels,
        mean=mean,
        std=std,
    )


def _normalization(position: int) -> Callable[[argparse.Namespace, Mapping[str, Any]], list[float]]:
    def build(args: argparse.Namespace, built: Mapping[str, Any]) -> list[float]:
        from lightning_sas.cli.audit_inputs import read_normalization

        return read_normalization(args)[position]

    return build


def _methods(args: argparse.Namespace, built: Mapping[str, Any]) -> list[Any]:
    from lightning_sas.cli.methods import build_methods

    names = name_list(args.methods) or []
    return list(build_methods(names, args.sas_iterations, args.gradcam_layer, args.method_config).values())


def _artifacts(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.cli.audit_command import ARTIFACT_SEED
    from lightning_sas.probes.folder_dataset import ProbeFolderDataset
    from lightning_sas.trust.intervention import Artifacts

    if args.artifacts is None:
        return None
    if args.artifact_class is None:
        raise ValueError(f"artifacts: {args.artifacts} needs artifact-class, the class the artifact pushes to.")
    probes = built.get("probe")
    if not isinstance(probes, ProbeFolderDataset):
        raise ValueError("artifacts: are read at the size and normalisation of the probes of probe:, not given here.")
    trials = args.artifact_trials
    return Artifacts.from_folder(args.artifacts, args.artifact_class, probes, trials=trials, seed=ARTIFACT_SEED)


def _discovery(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.cli.methods import parse_discovery_config
    from lightning_sas.cli.model_setup import DISCOVERY_SEED

    if args.discovery_method is not None and args.discovery_method not in (name_list(args.methods) or []):
        raise ValueError(f"discovery-method {args.discovery_method} is not one of methods ({args.methods}).")
    settings = parse_discovery_config(args.discovery_config)
    return DiscoveryOptions(args.discovery, args.discovery_method, DISCOVERY_SEED, settings)


def _faithfulness(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.scores.faithfulness import Faithfulness

    return False if args.no_faithfulness else Faithfulness(steps=args.faithfulness_steps)


def _output(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.cli.model_setup import resolve_output

    return resolve_output(args.output)


def _alert_rule(args: argparse.Namespace, built: Mapping[str, Any]) -> Any:
    from lightning_sas.cli.audit_inputs import alert_rule

    return alert_rule(args)


#: Per callback argument, the ``lightning-sas audit`` options it is built from (``argparse``
#: names), in build order (the artifacts need the probes). The one table of where keys go.
SHARED: dict[str, Shared] = {
    "probe": Shared(
        ("probe", "masks", "object_masks", "labels", "class_names", "image_size", "channels", "mean", "std"), _probe
    ),
    "class_names": Shared(("class_names",), lambda args, built: name_list(args.class_names)),
    "mean": Shared(("mean", "channels"), _normalization(0)),
    "std": Shared(("std", "channels"), _normalization(1)),
    "methods": Shared(("methods", "method_config", "sas_iterations", "gradcam_layer"), _methods),
    "target": Shared(("target",), lambda args, built: args.target),
    "output": Shared(("output",), _output),
    "alert_rule": Shared(("min_enrichment", "min_flip_rate", "shortcut_threshold", "min_roi_pixels"), _alert_rule),
    "shortcut_threshold": Shared(("shortcut_threshold",), lambda args, built: args.shortcut_threshold),
    "artifacts": Shared(("artifacts", "artifact_class", "artifact_trials"), _artifacts),
    "faithfulness": Shared(("no_faithfulness", "faithfulness_steps"), _faithfulness),
    "sanity": Shared(("sanity", "sanity_stages"), lambda args, built: args.sanity_stages if args.sanity else False),
    "discovery": Shared(("discovery", "discovery_method", "discovery_config"), _discovery),
}


def callback_only_arguments() -> list[str]:
    """The callback's arguments that the ``callback:`` section may give: those :data:`SHARED` does not build."""
    from lightning_sas.callback.audit_callback import SASAuditCallback

    parameters = inspect.signature(SASAuditCallback.__init__).parameters
    return [name for name in parameters if name != "self" and name not in SHARED]


def callback_arguments(
    config: str | os.PathLike[str] | Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The callback's keyword arguments from a job file (see the module docstring); ``overrides`` win.

    Args:
        config: The YAML file, or its content as a mapping (with ``audit:`` and ``callback:``).
        overrides: Callback arguments given in code.

    Raises:
        ValueError: If the file cannot be read, has no ``audit:`` mapping, or a key or value is
            refused (the message names the file, the section and the key).
    """
    source, content = _read(config)
    section = content.get("audit")
    if not isinstance(section, Mapping):
        raise ValueError(f"{source}: needs an audit: section (a mapping of options), got {section!r}.")
    arguments = _callback_section(source, content.get(CALLBACK_SECTION))
    options = _audit_options(source, section)
    built: dict[str, Any] = {}
    for name, shared in SHARED.items():
        try:
            built[name] = overrides[name] if name in overrides else shared.build(options, built)
        except (UsageError, ValueError) as error:
            raise ValueError(f"{source}: audit: section, for the callback's `{name}`: {error}") from None
    return {**built, **arguments, **overrides}


def _read(config: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """``(how messages name it, its content)``."""
    if isinstance(config, Mapping):
        return "the job configuration", config
    if not isinstance(config, str | os.PathLike):
        raise ValueError(f"`config` must be a YAML file path or a mapping, got {type(config).__name__}.")
    from lightning_sas.cli.init_args import _load_yaml
    from lightning_sas.cli.model_import import ModelLoadError

    path = Path(config)
    try:
        content = _load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"`config` {str(path)!r} cannot be read ({error}).") from None
    except ModelLoadError as error:
        raise ValueError(str(error)) from None
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: a job file is a mapping of sections (audit:, callback:), got {content!r}.")
    return str(path), content


def _audit_options(source: str, section: Mapping[str, Any]) -> argparse.Namespace:
    """The ``audit:`` section read by the command line's parser: its values, checks and defaults."""
    from lightning_sas.cli.parser import build_parser

    try:
        parser = build_parser((source, dict(section)))
    except UsageError as error:
        raise ValueError(str(error)) from None
    # argparse keeps no public handle on a subcommand's parser.
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    audit = commands.choices["audit"]
    for action in audit._actions:
        action.required = False  # checkpoint, model, out: the command line's only
    audit.exit_on_error = False
    try:
        return audit.parse_args([])
    except argparse.ArgumentError as error:
        raise ValueError(f"{source}: audit: section: {error}.") from None


def _callback_section(source: str, section: object) -> dict[str, Any]:
    """The ``callback:`` section as keyword arguments (dashes read as underscores)."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{source}: the {CALLBACK_SECTION}: section must be a mapping of arguments, got {section!r}.")
    allowed = callback_only_arguments()
    arguments = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name in SHARED:
            raise ValueError(
                f"{source}: {CALLBACK_SECTION}.{key} is read from the audit: section, where the command line reads it "
                f"too; move it there (or pass {name}= in code)."
            )
        if name not in allowed:
            near = difflib.get_close_matches(name, allowed, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"its arguments: {', '.join(allowed)}."
            raise ValueError(f"{source}: {CALLBACK_SECTION}.{key} is not an argument of SASAuditCallback; {hint}")
        arguments[name] = value
    return arguments
