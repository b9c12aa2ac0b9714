"""The ``lightning-sas`` command line: ``lightning-sas audit`` audits a saved checkpoint.

The same audit as the training callback, on a checkpoint and a folder of probe images, for
nightly jobs: TensorBoard event files with the callback's tags, ``report.html`` for people,
``summary.json`` for machines, and an exit status a scheduler can act on:

* 0: the audit ran on every method and no shortcut threshold was crossed (or no probe has a
  mask);
* 1: the audit ran and a method's mean ``roi_share`` is above ``--shortcut-threshold``; this
  status means exactly that and nothing else;
* 2: anything else: a usage or input error (bad path, a file that is no checkpoint, a model
  output that is not logits, no readable image, an ``--out`` folder that already holds an
  audit without ``--overwrite``), an unexpected exception (the model's forward raising, the
  model module failing at import, a bug), or an incomplete audit (a method failed, or a method
  has no finite score on any probe with a mask; ``summary.json`` and ``report.html`` are still
  written and list the problem). Status 2 wins over 1.

Every error is one line on stderr, ``lightning-sas: error: ...``. For an unexpected exception
that line names the exception and where it happened, and the full traceback is written to
``<out>/error.log``.

``--output SPEC`` says where the logits are in the model's output: an integer index (tuple or
list outputs), a dict key, or ``module:function`` (a callable mapping the output to logits,
imported like ``--model``). Models returning ``[B, C]`` logits or a single binary logit
(``[B]`` or ``[B, 1]``, e.g. trained with ``BCEWithLogitsLoss``) need no ``--output``.

``--overwrite`` lets ``--out`` be a folder that already holds an audit: the previous audit's
files (``summary.json``, ``report.html``, ``events.out.tfevents.*``, ``hparams.yaml``,
``error.log``) are removed once the inputs check out, before the model is loaded.

Reading the probe folder lives in :mod:`lightning_sas.probe_folder` and importing the model and
loading the checkpoint in :mod:`lightning_sas.checkpoint`; this module parses the command line
and runs the steps. Heavy libraries (torch, Lightning, OpenCV) are imported only when a command
needs them, so ``--help`` and most usage errors answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.checkpoint import SPEC_PATTERN, ModelLoadError
from lightning_sas.probe_folder import IMAGE_EXTENSIONS, ProbeFolder, ProbeFolderError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.audit import AuditResult
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.outputs import OutputSelector
    from lightning_sas.probes import Probes

PROGRAM = "lightning-sas"
EXIT_OK = 0
EXIT_SHORTCUT = 1
EXIT_ERROR = 2
#: The former name of :data:`EXIT_ERROR`.
EXIT_USAGE = EXIT_ERROR
#: Where the traceback of an unexpected exception goes, inside ``--out``.
ERROR_LOG = "error.log"
#: Files of a previous audit in ``--out`` (``--overwrite`` removes them); TensorBoard's event
#: files are matched by prefix.
AUDIT_FILES = ("summary.json", "report.html", "hparams.yaml")
EVENTS_PREFIX = "events.out.tfevents."
#: Longest exception text quoted in the one-line error message.
_MESSAGE_LIMIT = 300

_EPILOG = f"""\
examples:
  # audit last night's checkpoint; exit 1 if a method's mean roi_share is above 0.5
  lightning-sas audit \\
      --checkpoint runs/last.ckpt \\
      --model my_project.models:LesionClassifier \\
      --probe probes/images --masks probes/rulers --labels probes/labels.csv \\
      --class-names benign,malignant \\
      --image-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
      --methods sas,gradcam --shortcut-threshold 0.5 \\
      --baseline audits/2024-05-01/summary.json \\
      --out audits/2024-05-02

  # a quick look on the CPU with a cheap SaS; a model returning {{"logits": ..., "features": ...}}
  lightning-sas audit --checkpoint last.ckpt --model pkg.mod:Net --output logits --probe probes \\
      --device cpu --sas-iterations 20 --out /tmp/audit --overwrite

probe folder:
  Images ({", ".join(extension[1:] for extension in IMAGE_EXTENSIONS)}) are read in file-name order,
  converted to RGB (or grey with --channels 1), resized to --image-size (N x N, or H x W;
  bilinear), scaled to [0, 1] and, with --mean/--std, normalised as (x - mean) / std (one value
  is used for every channel). Without --mean/--std the model gets [0, 1] inputs. A mask has the
  probe's file name (any image extension) in --masks; nonzero pixels are the region of interest
  (e.g. the ruler). Files that cannot be decoded are skipped and listed in the report.

labels file:
  CSV rows "filename,label" (an optional header row "filename,label"); the label is a class
  index, -1 for unknown, or one of --class-names.

model output (--output):
  [B, C] logits, or one logit [B] / [B, 1] for a binary classifier, need no --output. For a
  tuple, list or dict output, --output picks the logits: an index (--output 0), a key
  (--output logits) or module:function (--output my_project.heads:logits_of, a callable
  taking the model's output and returning the logits).

output (in --out):
  events.out.tfevents.*  TensorBoard, same tags as the training callback (step 0)
  report.html            self-contained report: overlays and scores per probe
  summary.json           scores, probe manifest with content hashes, versions, command;
                         "errors" (failed methods) and "nonfinite" (probes with NaN/inf)
  error.log              only after an unexpected error: its full traceback
  A folder that already holds an audit is refused; --overwrite replaces that audit's files.

exit status:
  0  audit ran, no shortcut threshold crossed (or no probe has a mask)
  1  audit ran and a method's mean roi_share over the masked probes is above
     --shortcut-threshold (stdout and the report name the method and probes); only this
  2  anything else, in one line on stderr: usage or input error (bad path, a file that is no
     checkpoint, model output that is not logits, no readable image, --out holding an audit);
     an unexpected exception (traceback in <out>/{ERROR_LOG}); or an incomplete audit (a method
     failed or has no finite score; summary.json and report.html are still written)
"""


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit status 2."""


class _Failure(Exception):
    """An unexpected exception (its ``__cause__``) while doing ``what``: exit 2, traceback to error.log."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint


@contextmanager
def _stage(what: str, hint: str = "") -> Iterator[None]:
    """Name the step that was running when an unexpected exception escapes from the block.

    Input errors (already one-line messages) pass through unchanged.
    """
    try:
        yield
    except (UsageError, _Failure):
        raise
    except Exception as error:  # anything else is unexpected; main() writes its traceback
        raise _Failure(what, hint) from error


# ----------------------------------------------------------------------------- arguments


def _float_list(values: Sequence[str] | None, option: str) -> list[float] | None:
    """Numbers given as ``0.5 0.5 0.5`` or ``0.5,0.5,0.5``.

    Raises:
        UsageError: If a value is not a number.

    Example:
        >>> _float_list(["0.5,0.25", "1"], "--mean")
        [0.5, 0.25, 1.0]
    """
    if values is None:
        return None
    parts = [part for value in values for part in value.replace(",", " ").split()]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise UsageError(
            f"{option} takes numbers (e.g. {option} 0.485 0.456 0.406), got {' '.join(values)!r}."
        ) from None


def _name_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def parse_image_size(values: Sequence[str]) -> tuple[int, int]:
    """``--image-size``: ``N`` (N x N), ``H W`` or ``HxW``, as ``(height, width)``.

    Raises:
        UsageError: For anything but one or two positive integers.

    Example:
        >>> parse_image_size(["224"]), parse_image_size(["96", "128"]), parse_image_size(["96x128"])
        ((224, 224), (96, 128), (96, 128))
    """
    parts = [part for value in values for part in re.split(r"[xX,\s]+", value.strip()) if part]
    if len(parts) in (1, 2) and all(re.fullmatch(r"\d+", part) and int(part) > 0 for part in parts):
        numbers = [int(part) for part in parts]
        return (numbers[0], numbers[-1])
    raise UsageError(
        f"--image-size takes N (N x N pixels), H W or HxW with positive integers "
        f"(e.g. --image-size 224 or --image-size 192x256), got {' '.join(values)!r}."
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-sas`` with its ``audit`` subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Audit image classifiers trained with PyTorch Lightning: which pixels drive their decisions.",
        epilog=f"run '{PROGRAM} audit --help' for the audit's options, examples and exit status.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    audit = commands.add_parser(
        "audit",
        help="audit a saved checkpoint on a folder of probe images",
        description=(
            "Explain a folder of probe images with a saved LightningModule checkpoint (SaS, Grad-CAM),\n"
            "score the maps against region-of-interest masks, and write TensorBoard events, report.html\n"
            "and summary.json to --out. Exits 1 exactly when a shortcut threshold is crossed, 2 on any error."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = audit.add_argument_group("inputs")
    inputs.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="Lightning checkpoint file (.ckpt, from Trainer.save_checkpoint) to audit, e.g. runs/last.ckpt.",
    )
    inputs.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="import path of the LightningModule class, e.g. my_project.models:LesionClassifier "
        "(the module must be importable: install the project or set PYTHONPATH).",
    )
    inputs.add_argument(
        "--output",
        metavar="SPEC",
        help="where the logits are in the model's output, for models returning a tuple, list or dict: "
        "an index (e.g. --output 0), a key (e.g. --output logits) or module:function, a callable "
        "mapping the output to logits (e.g. --output my_project.heads:logits_of). Not needed for "
        "[B, C] logits or a single binary logit [B] / [B, 1].",
    )
    inputs.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs unpickling arbitrary Python objects, e.g. custom classes in its "
        "hyper-parameters. Loading such a file can run code from it: only for checkpoints you trust. "
        "By default only weights and plain types are loaded.",
    )
    inputs.add_argument(
        "--probe", required=True, metavar="DIR", help="folder of probe images (png/jpg/...), e.g. probes/images."
    )
    inputs.add_argument(
        "--masks",
        metavar="DIR",
        help="folder of region-of-interest masks with the probes' file names, nonzero = ROI, e.g. probes/rulers. "
        "Probes without a mask are audited but not scored.",
    )
    inputs.add_argument(
        "--labels", metavar="FILE.csv", help="CSV of 'filename,label' rows (true classes), e.g. probes/labels.csv."
    )
    inputs.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, used in the report and in --labels, e.g. benign,malignant.",
    )
    preprocessing = audit.add_argument_group("preprocessing")
    preprocessing.add_argument(
        "--image-size",
        nargs="+",
        default=["224"],
        metavar="N",
        help="images (and masks) are resized to N x N pixels, or H x W given as 'H W' or HxW, "
        "e.g. --image-size 224 or --image-size 192x256 (default: 224).",
    )
    preprocessing.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=3,
        help="input channels the model expects: 3 (RGB, default) or 1 (grey), e.g. --channels 1.",
    )
    preprocessing.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="normalisation mean: one value for every channel or one per channel, "
        "e.g. --mean 0.485 0.456 0.406 (default: none, inputs in [0, 1]).",
    )
    preprocessing.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="normalisation standard deviation: one value for every channel or one per channel, "
        "e.g. --std 0.229 0.224 0.225 (default: none).",
    )
    audit_options = audit.add_argument_group("audit")
    audit_options.add_argument(
        "--methods",
        default="sas,gradcam",
        metavar="NAMES",
        help="comma-separated attribution methods, e.g. --methods gradcam (default: sas,gradcam).",
    )
    audit_options.add_argument(
        "--sas-iterations",
        type=_positive_int,
        default=100,
        metavar="N",
        help="optimisation steps of SaS; fewer is faster and coarser, e.g. --sas-iterations 20 (default: 100).",
    )
    audit_options.add_argument(
        "--gradcam-layer",
        metavar="NAME",
        help="module name of the layer Grad-CAM explains, e.g. --gradcam-layer model.layer4 "
        "(default: found automatically, the last spatial feature map).",
    )
    audit_options.add_argument(
        "--target",
        choices=("pred", "label"),
        default="pred",
        help="class to explain: the model's prediction (pred, default) or the true label from --labels "
        "(label; every probe needs one), e.g. --target label.",
    )
    audit_options.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run: auto (the GPU when there is one, default), cpu or cuda, e.g. --device cpu.",
    )
    audit_options.add_argument(
        "--shortcut-threshold",
        type=_unit_float,
        default=0.5,
        metavar="T",
        help="exit 1 when a method's mean roi_share over the probes with a mask is above T, "
        "e.g. --shortcut-threshold 0.5 (default: 0.5; chance level is the masks' area share).",
    )
    outputs = audit.add_argument_group("outputs")
    outputs.add_argument(
        "--baseline",
        metavar="SUMMARY.json",
        help="summary.json of a previous audit: report per-probe and mean changes against it, "
        "e.g. --baseline audits/2024-05-01/summary.json.",
    )
    outputs.add_argument(
        "--baseline-tolerance",
        type=_unit_float,
        default=0.05,
        metavar="D",
        help="roi_share changes larger than D against --baseline are flagged in the report, "
        "e.g. --baseline-tolerance 0.1 (default: 0.05). Flags do not change the exit status.",
    )
    outputs.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; one per audit: a folder that already holds an audit is refused "
        "unless --overwrite), e.g. audits/2024-05-02.",
    )
    outputs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the audit already in --out: its summary.json, report.html, event files and error.log "
        "are removed before this audit runs, e.g. --out audits/latest --overwrite.",
    )
    return parser


# ----------------------------------------------------------------------------- inputs


def previous_audit_files(out: Path) -> list[Path]:
    """Files of an earlier audit (or its error log) directly in ``out``, in name order."""
    if not out.is_dir():
        return []
    return sorted(
        path
        for path in out.iterdir()
        if path.is_file() and (path.name in (*AUDIT_FILES, ERROR_LOG) or path.name.startswith(EVENTS_PREFIX))
    )


def _check_out(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; give a folder (it is created if missing).")
    held = [path.name for path in previous_audit_files(out) if path.name != ERROR_LOG]
    if held and not args.overwrite:
        raise UsageError(
            f"--out {args.out} already holds an audit ({', '.join(held[:3])}); give a fresh folder per audit, "
            "or pass --overwrite to replace it."
        )


def _check_inputs(args: argparse.Namespace) -> None:
    """Checks that need no heavy import: paths, the checkpoint's first bytes, --model, --out.

    Raises:
        UsageError: For the first problem found.
    """
    from lightning_sas.checkpoint import check_checkpoint_file

    if not re.fullmatch(SPEC_PATTERN, args.model):
        raise UsageError(f"--model must be 'package.module:ClassName', got {args.model!r}.")
    if args.output is not None and not args.output.strip():
        raise UsageError("--output needs an index, a key or module:function, got an empty string.")
    for option, value in (("--probe", args.probe), ("--masks", args.masks)):
        if value is not None and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: no such folder.")
    for option, value in (("--labels", args.labels), ("--baseline", args.baseline)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{option} {value}: no such file.")
    _check_out(args)
    try:
        check_checkpoint_file(args.checkpoint)
    except ModelLoadError as error:
        raise UsageError(f"--checkpoint {error}") from None


def _read_normalization(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """``--mean`` / ``--std`` per channel, read by :mod:`lightning_sas.normalization` (0 and 1 when absent).

    Raises:
        UsageError: If a value is not a number, a ``--std`` is not positive, or there are
            neither 1 nor ``--channels`` values.
    """
    from lightning_sas.normalization import check_normalization, per_channel

    given = {"mean": _float_list(args.mean, "--mean"), "std": _float_list(args.std, "--std")}
    try:
        mean, std = check_normalization(given["mean"], given["std"], prefix="--")
    except ValueError as error:
        raise UsageError(str(error)) from None
    resolved = {}
    for name, values, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        try:
            resolved[name] = per_channel(name, values if values is not None else [default], args.channels)
        except ValueError as error:
            reason = str(error).rstrip(".")
            raise UsageError(
                f"--{name} {' '.join(getattr(args, name))}: {reason} (--channels {args.channels})."
            ) from None
    return resolved["mean"], resolved["std"]


@dataclass
class AuditInputs:
    """Everything read from the command line and the disk before the model is loaded."""

    class_names: list[str] | None
    method_names: list[str]
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    folder: ProbeFolder
    baseline: dict[str, Any] | None


def read_inputs(args: argparse.Namespace) -> AuditInputs:
    """Check the options and read labels, probe images and baseline (no model needed yet).

    Raises:
        UsageError: For any usage or input problem.
    """
    from lightning_sas.probe_folder import read_labels, read_probe_folder

    _check_inputs(args)
    image_size = parse_image_size(args.image_size)
    class_names = _name_list(args.class_names)
    method_names = _name_list(args.methods) or []
    if not method_names:
        raise UsageError("--methods needs at least one method name, e.g. --methods sas,gradcam.")
    mean, std = _read_normalization(args)
    labels: dict[str, int] = {}
    if args.labels:
        try:
            labels = read_labels(args.labels, class_names, class_names_source="--class-names")
        except ProbeFolderError as error:
            raise UsageError(f"--labels {error}") from None
    try:
        folder = read_probe_folder(args.probe, args.masks, labels, size=image_size, channels=args.channels)
    except ProbeFolderError as error:
        raise UsageError(f"--probe {error}") from None
    unmatched = sorted(set(labels) - set(folder.names) - {item.file for item in folder.skipped})
    if unmatched:
        print(
            f"{PROGRAM}: warning: --labels names {len(unmatched)} file(s) not in --probe, e.g. {unmatched[0]}",
            file=sys.stderr,
        )
    if args.target == "label" and any(label < 0 for label in folder.labels):
        missing = [name for name, label in zip(folder.names, folder.labels, strict=True) if label < 0]
        raise UsageError(f"--target label needs a label for every probe; none for {', '.join(missing[:3])}.")
    baseline = None
    if args.baseline:
        from lightning_sas.report import load_summary

        try:
            baseline = load_summary(args.baseline)
        except (ValueError, OSError) as error:
            raise UsageError(f"--baseline: {error}") from None
    return AuditInputs(class_names, method_names, image_size, mean, std, folder, baseline)


def _clear_previous_audit(out: Path) -> None:
    """Remove the files of an audit already in ``out`` (checked by :func:`_check_out`).

    A stale ``error.log`` goes too, so the folder never mixes two runs' files.

    Raises:
        UsageError: If a file cannot be removed.
    """
    for path in previous_audit_files(out):
        try:
            path.unlink()
        except OSError as error:
            raise UsageError(
                f"--out {out}: cannot remove the previous {path.name} ({error.strerror or error})."
            ) from None


# ----------------------------------------------------------------------------- model


def _import_model(spec: str) -> type[LightningModule]:
    from lightning_sas.checkpoint import import_model_class

    with _stage(f"importing --model {spec}"):
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
    from lightning_sas.checkpoint import import_object

    if text is None:
        return None
    spec = text.strip()
    if re.fullmatch(r"[+-]?\d+", spec):
        return int(spec)
    if not re.fullmatch(SPEC_PATTERN, spec):
        return spec
    with _stage(f"importing --output {spec}"):
        try:
            function = import_object(spec)
        except ModelLoadError as error:
            raise UsageError(f"--output {error}") from None
    if not callable(function):
        raise UsageError(f"--output {spec} is a {type(function).__name__}, not a callable taking the model's output.")
    return function


def _load_model(model_class: type[LightningModule], args: argparse.Namespace, device: torch.device) -> LightningModule:
    from lightning_sas.checkpoint import load_checkpoint

    with _stage(f"loading --checkpoint {args.checkpoint} into {model_class.__name__}"):
        try:
            return load_checkpoint(
                model_class,
                args.checkpoint,
                device,
                trust=args.trust_checkpoint,
                trust_hint="re-run with --trust-checkpoint",
            )
        except ModelLoadError as error:
            raise UsageError(f"--checkpoint {error}") from None


def check_model_output(model: torch.nn.Module, images: torch.Tensor, output: OutputSelector, spec: str | None) -> None:
    """Forward the probes once and check that ``output`` finds class logits in what comes back.

    Raises:
        UsageError: If the (selected) output is not ``[N, C]`` logits or a single binary logit;
            the message names the output's type and shape and ``--output``.
        _Failure: If the forward (or an ``--output`` function) raises.
    """
    import torch

    from lightning_sas.model_state import attribution_mode
    from lightning_sas.outputs import class_logits, describe_output, select_output

    shape = list(images.shape)
    with (
        _stage(
            f"running the model on the probe images {shape}",
            hint="do --image-size, --channels and --mean/--std fit the model?",
        ),
        attribution_mode(model) as forward_module,
        torch.no_grad(),
    ):
        raw = forward_module(images)
    given = f"--output {spec}" if spec is not None else "no --output"
    expected = f"class logits [{shape[0]}, num_classes] or one logit [{shape[0]}] / [{shape[0]}, 1] per image"
    if callable(output):
        # The user's function: whatever it raises is unexpected and needs its traceback.
        with _stage(f"applying --output {spec} to the model's output ({describe_output(raw)})"):
            selected = output(raw)
    else:
        try:
            selected = select_output(raw, output)
        except ValueError:
            kind = "an index" if isinstance(output, int) else "a key"
            keys = f" (keys: {', '.join(map(str, raw))})" if isinstance(raw, Mapping) else ""
            raise UsageError(
                f"--output {spec} is {kind} that does not fit the model's output, {describe_output(raw)}{keys}."
            ) from None
    try:
        class_logits(selected, None, shape[0])
    except ValueError:
        if spec is None and isinstance(raw, torch.Tensor):
            advice = "pass --output module:function, a callable that turns it into logits"
        elif spec is None:
            advice = "pass --output INDEX, KEY or module:function to pick the logits"
        else:
            advice = "give another --output"
        raise UsageError(
            f"the model's output is {describe_output(selected)} with {given}, not {expected}; {advice}."
        ) from None


def resolve_device(choice: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU.

    Raises:
        UsageError: If ``cuda`` is asked for and there is none.
    """
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto).")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def build_methods(names: Sequence[str], sas_iterations: int, gradcam_layer: str | None) -> dict[str, AttributionMethod]:
    """Method objects by name, with the command line's settings for SaS and Grad-CAM.

    Raises:
        UsageError: For an unknown or repeated method name.
    """
    from lightning_sas.audit import resolve_methods
    from lightning_sas.methods import GradCAM, SaS

    factories: dict[str, Callable[[], AttributionMethod]] = {
        "sas": lambda: SaS(iterations=sas_iterations),
        "gradcam": lambda: GradCAM(target_layer=gradcam_layer),
    }
    try:
        return resolve_methods([factories[name]() if name in factories else name for name in names])
    except (ValueError, TypeError) as error:
        raise UsageError(f"--methods: {error}") from None


# ----------------------------------------------------------------------------- audit


@contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """A tqdm bar on stderr (shown when stderr is a terminal); yields ``advance(next_stage)``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), unit="step", leave=False)
    bar.set_description("loading")

    def advance(stage: str) -> None:
        bar.update(1)
        bar.set_description(stage)

    try:
        yield advance
    finally:
        bar.close()


def audit_each_method(
    model: LightningModule,
    probes: Probes,
    methods: dict[str, AttributionMethod],
    target: str,
    advance: Callable[[str], None],
    output: OutputSelector = None,
) -> AuditResult:
    """:func:`~lightning_sas.audit.run_audit`, advancing the progress bar before each method."""
    from lightning_sas.audit import run_audit

    return run_audit(
        model,
        probes,
        methods,
        target=target,  # type: ignore[arg-type]
        progress=lambda name: advance(f"explaining ({name})"),
        output=output,
    )


def write_tensorboard(
    out: Path, pictures: dict[str, np.ndarray], scalars: dict[str, float], texts: dict[str, str]
) -> None:
    """TensorBoard events directly in ``out`` with the callback's tags at step 0, flushed and closed."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sas.audit_logging import write_pictures, write_text

    logger = TensorBoardLogger(save_dir=str(out), name="", version="", default_hp_metric=False)
    try:
        write_pictures([logger], pictures, step=0)
        for tag, text in texts.items():
            write_text([logger], tag, text, step=0)
        logger.log_metrics(scalars, step=0)
    finally:
        logger.experiment.flush()
        logger.experiment.close()


def _texts(summary: dict[str, Any], problems: Sequence[str]) -> dict[str, str]:
    """The callback's text tags: ``audit/manifest`` always (class names, not indices),
    ``audit/alert`` when a threshold is crossed or the audit has problems."""
    from lightning_sas.audit_logging import manifest_markdown
    from lightning_sas.probes import class_label

    class_names = summary.get("class_names")
    manifest = [{**item, "label": class_label(item["label"], class_names)} for item in summary["manifest"]]
    texts = {"audit/manifest": manifest_markdown(manifest)}
    alerts = [_verdict(summary)] if summary["crossed"] else []
    alerts += list(problems)
    if alerts:
        texts["audit/alert"] = "\n\n".join(alerts)
    return texts


def _unchecked_methods(summary: dict[str, Any]) -> list[str]:
    """Methods with no finite score on any probe with a mask (so the threshold could not be checked)."""
    if not summary["threshold_checked"]:
        return []
    return [name for name, means in summary["methods"].items() if means["roi_share"] is None]


def _verdict(summary: dict[str, Any]) -> str:
    threshold = summary["threshold"]
    if not summary["threshold_checked"]:
        return f"no probe has a mask: nothing to check against the shortcut threshold {threshold:g}"
    if not summary["crossed"]:
        unchecked = _unchecked_methods(summary)
        checked = [name for name in summary["methods"] if name not in unchecked]
        if not checked:
            return f"no method has a finite score on the probes with a mask: threshold {threshold:g} not checked"
        return f"no shortcut threshold crossed (mean roi_share <= {threshold:g} for {', '.join(checked)})"
    parts = []
    for name, shortcut in summary["shortcuts"].items():
        top = ", ".join(f"{item['file']} {item['roi_share']:.3f}" for item in shortcut["top_probes"])
        parts.append(f"{name} mean roi_share {shortcut['roi_share']:.3f} > {threshold:g} (highest: {top})")
    return "SHORTCUT threshold crossed: " + "; ".join(parts)


def _run_record(
    args: argparse.Namespace,
    inputs: AuditInputs,
    model_class: type[LightningModule],
    device: torch.device,
    command: list[str],
) -> dict:
    """What identifies this run in ``summary.json``: versions, command line, inputs, settings."""
    import lightning
    import torch

    import lightning_sas

    return {
        "lightning_sas": lightning_sas.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "command": command,
        "checkpoint": str(args.checkpoint),
        "model": args.model,
        "model_class": model_class.__qualname__,
        "output": args.output,
        "device": str(device),
        "image_size": list(inputs.image_size),
        "channels": args.channels,
        "mean": inputs.mean,
        "std": inputs.std,
        "target": args.target,
    }


def run_audit_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas audit``; returns the exit status.

    Returns:
        0 (nothing crossed), 1 (a shortcut threshold crossed) or 2 (the audit is incomplete:
        a method failed or has no finite score; the outputs are written all the same).

    Raises:
        UsageError: For any usage or input problem.
        _Failure: For an unexpected exception, naming the step it happened in.
    """
    with _stage("reading the inputs"):
        inputs = read_inputs(args)
    out = Path(args.out)
    _clear_previous_audit(out)

    model_class = _import_model(args.model)
    output = resolve_output(args.output)
    methods = build_methods(inputs.method_names, args.sas_iterations, args.gradcam_layer)
    device = resolve_device(args.device)
    with _progress(total=len(methods) + 4) as advance:
        model = _load_model(model_class, args, device)
        advance("reading probes")
        with _stage("preparing the probe images"):
            from lightning_sas.probe_folder import to_probes

            probes = to_probes(inputs.folder, inputs.mean, inputs.std, device)
        check_model_output(model, probes.images, output, args.output)
        with _stage(f"explaining the probes with {', '.join(methods)}"):
            result = audit_each_method(model, probes, methods, args.target, advance, output)
        advance("rendering")
        with _stage("building the report"):
            from lightning_sas import report
            from lightning_sas.audit import problems
            from lightning_sas.audit_logging import audit_scalars, render_audit

            summary = report.build_summary(
                result,
                probes,
                skipped=inputs.folder.skipped,
                file_hashes=inputs.folder.file_hashes,
                threshold=args.shortcut_threshold,
                class_names=inputs.class_names,
                run=_run_record(args, inputs, model_class, device, command),
            )
            if inputs.baseline is not None:
                summary["baseline"] = report.compare_with_baseline(
                    summary, inputs.baseline, baseline_path=str(args.baseline), tolerance=args.baseline_tolerance
                )
            issues = problems(result, probes.names)
            display = {"mean": inputs.mean, "std": inputs.std}
            title = f"{model_class.__name__} {Path(args.checkpoint).name}"
            pictures = (
                render_audit(result, probes, **display, class_names=inputs.class_names, title=title)
                if result.maps
                else {}
            )
            html_pictures = report.probe_pictures(result, probes, **display)
        advance("writing")
        with _stage(f"writing to --out {args.out}"):
            try:
                out.mkdir(parents=True, exist_ok=True)
                write_tensorboard(out, pictures, audit_scalars(result), _texts(summary, issues))
                report.write_summary(summary, out / "summary.json")
                report.write_report(summary, html_pictures, out / "report.html")
            except OSError as error:
                raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
        advance("done")

    _print_summary(summary, issues, out)
    unchecked = _unchecked_methods(summary)
    if summary["errors"] or unchecked:
        failed = [f"{name} failed ({_one_line(message)})" for name, message in summary["errors"].items()]
        failed += [f"{name} has no finite score on any probe with a mask" for name in unchecked]
        print(
            f"{PROGRAM}: error: the audit is incomplete: {'; '.join(failed)}; "
            f"{out / 'summary.json'} and {out / 'report.html'} list it.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_SHORTCUT if summary["crossed"] else EXIT_OK


def _print_summary(summary: dict[str, Any], issues: Sequence[str], out: Path) -> None:
    methods = [*summary["methods"], *summary["errors"]]
    print(
        f"{PROGRAM}: audited {len(summary['probes'])} probe(s) with {', '.join(methods)} "
        f"in {summary['seconds']:.1f} s ({len(summary['skipped'])} skipped)"
    )
    for item in summary["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    for name, means in summary["methods"].items():
        share = "–" if means["roi_share"] is None else f"{means['roi_share']:.3f}"
        mass = "–" if means["roi_mass"] is None else f"{means['roi_mass']:.3f}"
        scored = (
            f", {means['probes_scored']} scored"
            if means.get("probes_scored", means["probes_with_mask"]) != means["probes_with_mask"]
            else ""
        )
        print(
            f"  {name}: mean roi_share {share}, roi_mass {mass} "
            f"({means['probes_with_mask']} probe(s) with a mask{scored})"
        )
    for issue in issues:
        print(f"  problem: {issue}")
    baseline = summary.get("baseline")
    if baseline:
        print(
            f"  against {baseline['file']}: {len(baseline['flagged_probes'])} probe(s) flagged, "
            f"methods with a changed mean: {', '.join(baseline['flagged_methods']) or 'none'}"
        )
    print(f"{PROGRAM}: {_verdict(summary)}")
    print(f"report: {out / 'report.html'}")


# ----------------------------------------------------------------------------- errors


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """``text``'s first non-empty line, whitespace collapsed, cut to ``limit`` characters.

    Example:
        >>> _one_line("\\n  first   line \\nsecond")
        'first line'
    """
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_error_log(out: Path, error: BaseException, what: str, command: Sequence[str]) -> str:
    """Write ``error``'s traceback to ``out/error.log``; returns how the one-line message refers to it."""
    import lightning_sas

    path = out / ERROR_LOG
    text = (
        f"{PROGRAM} {lightning_sas.__version__}, {datetime.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {' '.join(command)}\n"
        f"while {what}:\n\n" + "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as write_error:
        return f"the traceback could not be written to {path} ({write_error.strerror or write_error})"
    return f"full traceback in {path}"


def _report_unexpected(error: Exception, args: argparse.Namespace, command: Sequence[str]) -> None:
    """One line on stderr for an unexpected exception; its traceback to ``<out>/error.log``."""
    if isinstance(error, _Failure) and error.__cause__ is not None:
        cause, what, hint = error.__cause__, error.what, error.hint
    else:
        cause, what, hint = error, "running the audit", ""
    where = write_error_log(Path(args.out), cause, what, command)
    detail = _one_line(str(cause)) or "no message"
    hint_text = f" ({hint})" if hint else ""
    print(
        f"{PROGRAM}: error: {what} raised {type(cause).__name__}: {detail}{hint_text}; {where}.",
        file=sys.stderr,
    )


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 shortcut threshold crossed, 2 error).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_request:  # --help (0) and argparse's usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    command = [PROGRAM, *arguments]
    try:
        return run_audit_command(args, command)
    except UsageError as error:
        print(f"{PROGRAM}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or a failure in user code: one line, traceback to a file
        _report_unexpected(error, args, command)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
