"""The ``lightning-sas`` command line: ``lightning-sas audit`` audits a saved checkpoint.

The same audit as the training callback, on a checkpoint and a folder of probe images, for
nightly jobs: TensorBoard event files with the callback's tags, ``report.html`` for people,
``summary.json`` for machines, and an exit status a scheduler can act on:

* 0: every criterion the inputs allow was checked and none was crossed (or there was nothing
  to check: no probe has a mask and no artifact was given);
* 1: the alert rule fired: :func:`lightning_sas.verdict.decide`, the rule the training
  callback applies, found a voting method's ROI enrichment above ``--min-enrichment``, the
  artifact's flip rate above ``--min-flip-rate`` (with ``--artifacts``), or a method's mean
  ``roi_share`` above ``--shortcut-threshold`` (when given). Status 1 wins over an incomplete
  audit: a criterion that fired is never hidden by a part that failed;
* 2: anything else: a usage or input error (bad path, a file that is no checkpoint, a model
  output that is not logits, no readable image, a bad ``--artifacts`` folder or
  ``--artifact-class``, an ``--out`` folder that already holds an audit without
  ``--overwrite``), an unexpected exception (the model's forward raising, the model module
  failing at import, a bug), an incomplete audit (a method, the faithfulness scores or the
  sanity check failed, a method has no finite score on any probe with a mask), or a verdict
  that cannot tell (masks or artifacts were given but could not be checked: every ROI too
  small, every voting map flat or flagged by the sanity check, every probe already predicted as
  the artifact's class, a model whose output does not depend on its input); ``summary.json``
  and ``report.html`` are still written and say why.

Every error is one line on stderr, ``lightning-sas: error: ...``. For an unexpected exception
that line names the exception and where it happened, and the full traceback is written to
``<out>/error.log``. Before the audit starts, one more stderr line estimates its time (one
model pass timed on the probes, times the passes of :func:`lightning_sas.cost.audit_passes`);
on a terminal a progress bar follows for audits that take more than a few seconds.

Besides the ROI scores, the audit measures by default the faithfulness of each method's maps
(deletion / insertion AUCs; ``--no-faithfulness`` switches it off), with ``--artifacts DIR``
and ``--artifact-class`` the intervention (paste the artifact, count the predictions that
flip to its class), and with ``--sanity`` the model-parameter randomisation check (a method
whose maps do not depend on the model's weights is flagged: a warning, not status 1).

``--output SPEC`` says where the logits are in the model's output: an integer index (tuple or
list outputs), a dict key, or ``module:function`` (a callable mapping the output to logits,
imported like ``--model``). Models returning ``[B, C]`` logits or a single binary logit
(``[B]`` or ``[B, 1]``, e.g. trained with ``BCEWithLogitsLoss``) need no ``--output``.

``--overwrite`` lets ``--out`` be a folder that already holds an audit. Every audit is written
into a new folder beside ``--out`` first and put in its place (renamed) only once it is
complete, so a run that fails leaves the previous audit as it was.

``--init-args`` and ``--config`` (a LightningCLI config file) give the model's constructor
arguments that the checkpoint's hyper-parameters lack or that should differ; they are checked
against the constructor's signature before the checkpoint is loaded. A ``--gradcam-layer`` is
looked up as soon as the model is loaded, before any method runs; the layer Grad-CAM explained
(given or found automatically) is recorded in ``summary.json``, the report and TensorBoard.

``lightning-sas export-probes --dataset MODULE:CALLABLE --out DIR`` writes a probe folder
(images, ``masks/``, ``labels.csv``, ``manifest.json``) from a map-style data set returned by
an importable callable (:func:`lightning_sas.export.export_probes`), with the same error
conventions (exit 2, one line).

Reading the probe and artifact folders lives in :mod:`lightning_sas.probe_folder` and
importing the model and loading the checkpoint in :mod:`lightning_sas.checkpoint`; this module
parses the command line and runs the steps. Heavy libraries (torch, Lightning, OpenCV) are
imported only when a command needs them, so ``--help`` and most usage errors answer at once.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.checkpoint import SPEC_PATTERN, ModelLoadError, merge_init_args
from lightning_sas.probe_folder import (
    ARTIFACT_MASK_SUFFIX,
    ARTIFACT_MASKS_FOLDER,
    IMAGE_EXTENSIONS,
    ArtifactFolder,
    ProbeFolder,
    ProbeFolderError,
)
from lightning_sas.verdict import DEFAULT_MIN_ENRICHMENT, DEFAULT_MIN_FLIP_RATE, DEFAULT_MIN_ROI_PIXELS, AlertRule

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.methods import AttributionMethod
    from lightning_sas.outputs import OutputSelector

PROGRAM = "lightning-sas"
EXIT_OK = 0
#: The default per-method ROI enrichment thresholds, in words (for --help).
_ENRICHMENT_DEFAULTS = ", ".join(
    f"{'other methods' if name == '*' else name} {value:g}" for name, value in DEFAULT_MIN_ENRICHMENT.items()
)
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
  # audit last night's checkpoint; exit 1 if the alert rule fires (lift over chance, artifact flips)
  lightning-sas audit \\
      --checkpoint runs/last.ckpt \\
      --model my_project.models:LesionClassifier \\
      --probe probes/images --masks probes/rulers --labels probes/labels.csv \\
      --class-names benign,malignant \\
      --image-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
      --methods sas,gradcam --artifacts probes/ruler_patches --artifact-class malignant \\
      --baseline audits/2024-05-01/summary.json \\
      --out audits/2024-05-02

  # a quick look on the CPU with a cheap SaS; a model returning {{"logits": ..., "features": ...}}
  lightning-sas audit --checkpoint last.ckpt --model pkg.mod:Net --output logits --probe probes \\
      --device cpu --sas-iterations 20 --out /tmp/audit --overwrite

  # write a probe folder from the validation split, then audit it
  lightning-sas export-probes --dataset my_project.data:make_val_split --count 32 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant --out probes

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

artifacts folder (--artifacts DIR):
  DIR/<name>.png (any image extension) is an example of the artifact, e.g. a ruler cut out of
  a real image; its mask is DIR/{ARTIFACT_MASKS_FOLDER}/<name>.png, or DIR/<name>{ARTIFACT_MASK_SUFFIX}.png beside it,
  or else the patch's alpha channel (nonzero mask pixels = the artifact). A patch of a probe's size
  (--image-size, or a probe file's size) is a whole image: it is resized like the probes and
  pasted where its artifact is. A smaller patch keeps its pixel size and is pasted at seeded
  random positions (patches of several sizes are padded to the largest). Patches are
  converted and normalised like the probes (--channels, --mean/--std). Each probe not already
  predicted as --artifact-class gets --artifact-trials pastes; the flip rate is the share that
  moves the prediction to that class. lightning_sas.export.export_artifacts writes this layout.

alert rule (exit status 1), shared with the training callback (lightning_sas.verdict):
  a voting method's ROI enrichment (how far its top-ranked pixels lie on the masks beyond
  chance, pooled over the probes whose mask has at least --min-roi-pixels pixels; 0 is chance,
  1 is every top pixel on the mask) above --min-enrichment (default: per method, measured in
  the alert study: {_ENRICHMENT_DEFAULTS}; a number sets one threshold for every method);
  the flip rate above --min-flip-rate (default {DEFAULT_MIN_FLIP_RATE:g}; only with --artifacts);
  a method's mean roi_share above --shortcut-threshold (off unless given). Methods flagged by
  --sanity do not vote, nor do flat maps (no evidence). "off" switches --min-enrichment or
  --min-flip-rate off.

model constructor (--init-args, --config):
  The model is built by load_from_checkpoint with the hyper-parameters saved in the checkpoint
  (save_hyperparameters()), updated by the model: section of --config (init_args:, or the
  arguments directly), then by each --init-args in turn: a given argument wins over a saved one.
  A name the constructor does not take is refused before the checkpoint is loaded.

model output (--output):
  [B, C] logits, or one logit [B] / [B, 1] for a binary classifier, need no --output. For a
  tuple, list or dict output, --output picks the logits: an index (--output 0), a key
  (--output logits) or module:function (--output my_project.heads:logits_of, a callable
  taking the model's output and returning the logits).

cost:
  Before the audit one stderr line estimates its time: one model pass is timed on the probes
  and multiplied by the passes: SaS iterations x 2 x (num_masks - 1) per probe, Grad-CAM 1,
  faithfulness 2 x (steps - 1) per method and probe + 2, intervention trials + 1 per probe,
  --sanity its stages x the methods' passes. On a terminal a progress bar follows.

output (in --out):
  events.out.tfevents.*  TensorBoard, same tags as the training callback (step 0)
  report.html            self-contained report: verdict, overlays and scores per probe,
                         faithfulness, intervention and sanity check
  summary.json           scores (roi_share, roi_lift, roi_mass; deletion/insertion AUCs),
                         "verdict" (alert, reasons, crossed, checked, rule), "intervention",
                         "sanity", probe manifest with content hashes, versions, command;
                         "errors" (failed parts) and "nonfinite" (probes with NaN/inf)
  error.log              only after an unexpected error: its full traceback
  A folder that already holds an audit is refused; --overwrite replaces that audit once this one
  is written (in a new folder beside --out, then renamed): a run that fails leaves it as it was.

exit status:
  0  the alert rule was checked and did not fire (or there was nothing to check)
  1  the alert rule fired (stdout and the report give the reasons and the probes), also when
     another part of the audit failed. A sanity-check flag is a warning, not status 1
  2  anything else, in one line on stderr: usage or input error (bad path, a file that is no
     checkpoint, model output that is not logits, no readable image, a bad --artifacts folder
     or --artifact-class, --out holding an audit); an unexpected exception (traceback in
     <out>/{ERROR_LOG}); an incomplete audit (a method, faithfulness or the sanity check
     failed, a method has no finite score); or a verdict that cannot tell (masks or
     artifacts given but not checkable, a model whose output ignores its input); summary.json
     and report.html are still written)
"""

_EXPORT_EPILOG = f"""\
example:
  # my_project/data.py defines make_val_split() returning the validation Dataset
  lightning-sas export-probes --dataset my_project.data:make_val_split --count 32 --seed 0 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant --out probes
  lightning-sas audit --probe probes --masks probes/masks --labels probes/labels.csv \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant ...

data set:
  --dataset names a callable taking no arguments (a function or a class) that returns a
  map-style Dataset (__len__ and __getitem__), imported like --model. Items are an image, a
  tuple (image, label, ...) or a mapping with "image", "label" and "mask" (or "roi") keys;
  --image-key, --label-key and --mask-key give other keys, or positions in tuple items. A
  tuple's ROI mask is read only with --mask-key (e.g. --mask-key 2 for (image, label, roi_mask)):
  a third element may be metadata or an object mask. Images are float [C, H, W] tensors with 1
  or 3 channels, normalised as the model expects.

written (in --out: new, empty, or a previous export, which is replaced):
  probe_<index>.png      the images, de-normalised (x * std + mean), clipped to [0, 1], 8-bit
  masks/probe_<index>.png  the ROI mask of each item with a non-empty ROI (255 = ROI)
  labels.csv             "filename,label" rows, class names when --class-names is given
  manifest.json          data set index, label and sha256 of every file written; selection

exit status:
  0  exported; 2  anything else, in one line on stderr (an unexpected exception in the data
  set's code leaves its traceback in <out>/{ERROR_LOG})
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


def _off_or(parse: Callable[[str], float]) -> Callable[[str], float | None]:
    """An argparse type that also accepts ``off`` (the criterion switched off: ``None``)."""

    def parse_or_off(text: str) -> float | None:
        return None if text.strip().lower() in ("off", "none") else parse(text)

    parse_or_off.__name__ = parse.__name__
    return parse_or_off


def _steps(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
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
    """The argument parser of ``lightning-sas`` with its ``audit`` and ``export-probes`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Audit image classifiers trained with PyTorch Lightning: which pixels drive their decisions.",
        epilog=f"run '{PROGRAM} audit --help' or '{PROGRAM} export-probes --help' for options, examples "
        "and exit status.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    audit = commands.add_parser(
        "audit",
        help="audit a saved checkpoint on a folder of probe images",
        description=(
            "Explain a folder of probe images with a saved LightningModule checkpoint (SaS, Grad-CAM),\n"
            "score the maps against region-of-interest masks, and write TensorBoard events, report.html\n"
            "and summary.json to --out. Exits 1 exactly when the alert rule fires, 2 on any error."
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
        "--init-args",
        action="append",
        default=[],
        metavar="ARGS",
        help="constructor arguments of --model, for those the checkpoint does not hold (not saved with "
        "save_hyperparameters()) or that should differ: key=value (the value read as YAML) or a JSON/YAML "
        "mapping, repeatable, e.g. --init-args num_classes=3 or --init-args '{\"num_classes\": 3}'. "
        "They win over the saved hyper-parameters and --config.",
    )
    inputs.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="a LightningCLI config file; its model: section (init_args:, with an optional class_path: naming "
        "--model's class, or the arguments directly) gives constructor arguments that win over the saved "
        "hyper-parameters, e.g. --config configs/train.yaml (other sections are ignored).",
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
        help="comma-separated attribution methods, e.g. --methods gradcam (default: sas,gradcam); "
        "names: sas, gradcam, saliency, smoothgrad, ig, gradientshap, occlusion, lime.",
    )
    audit_options.add_argument(
        "--method-config",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="an option of one method, repeatable, e.g. --method-config sas.iterations=30 "
        "--method-config ig.rule=gausslegendre --method-config sas.autocast_dtype=torch.bfloat16 "
        "(values are Python literals, None, a torch dtype, or else text).",
    )
    audit_options.add_argument(
        "--sas-iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="optimisation steps of SaS (same as --method-config sas.iterations=N); fewer is faster and "
        "coarser, e.g. --sas-iterations 20 (default: SaS's own).",
    )
    audit_options.add_argument(
        "--gradcam-layer",
        metavar="NAME",
        help="module name of the layer Grad-CAM explains, checked once the model is loaded, e.g. "
        "--gradcam-layer model.layer4 (default: found automatically, the last spatial feature map; the "
        "layer explained is in summary.json, the report and TensorBoard).",
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
    trust = audit.add_argument_group("alert rule and trust checks")
    trust.add_argument(
        "--min-enrichment",
        type=_off_or(_unit_float),
        default=DEFAULT_MIN_ENRICHMENT,
        metavar="E",
        help="exit 1 when a voting method's ROI enrichment (0 = chance, 1 = every top-ranked pixel on the "
        f"masks) is above E, e.g. --min-enrichment 0.3 (default: per method, {_ENRICHMENT_DEFAULTS}, the training "
        "callback's rule; 'off' switches it off).",
    )
    trust.add_argument(
        "--min-roi-pixels",
        type=_positive_int,
        default=DEFAULT_MIN_ROI_PIXELS,
        metavar="N",
        help="probes whose mask has fewer pixels are left out of the ROI criteria, e.g. --min-roi-pixels 25 "
        f"(default: {DEFAULT_MIN_ROI_PIXELS}).",
    )
    trust.add_argument(
        "--min-flip-rate",
        type=_off_or(_unit_float),
        default=DEFAULT_MIN_FLIP_RATE,
        metavar="F",
        help="with --artifacts: exit 1 when the share of pastes that flip a prediction to --artifact-class "
        f"is above F, e.g. --min-flip-rate 0.5 (default: {DEFAULT_MIN_FLIP_RATE:g}; 'off' switches it off).",
    )
    trust.add_argument(
        "--shortcut-threshold",
        type=_unit_float,
        default=None,
        metavar="T",
        help="also exit 1 when a method's mean roi_share over the probes with a mask is above T "
        "(an absolute criterion, off by default: it punishes small artifacts), e.g. --shortcut-threshold 0.5.",
    )
    trust.add_argument(
        "--artifacts",
        metavar="DIR",
        help="folder of artifact examples (patches and masks, see 'artifacts folder' below) to paste onto "
        "the probes, e.g. --artifacts probes/ruler_patches; needs --artifact-class.",
    )
    trust.add_argument(
        "--artifact-class",
        metavar="NAME|INDEX",
        help="the class the artifact is suspected to push predictions to: a name from --class-names or an "
        "index, e.g. --artifact-class malignant. Required with --artifacts.",
    )
    trust.add_argument(
        "--artifact-trials",
        type=_positive_int,
        default=4,
        metavar="N",
        help="pastes per probe (positions / examples, seeded), e.g. --artifact-trials 8 (default: 4).",
    )
    trust.add_argument(
        "--no-faithfulness",
        action="store_true",
        help="skip the deletion / insertion faithfulness scores of the maps (on by default; they cost "
        "2 x (steps - 1) forwards per method and probe), e.g. --no-faithfulness for a quicker audit.",
    )
    trust.add_argument(
        "--faithfulness-steps",
        type=_steps,
        default=20,
        metavar="N",
        help="points of the deletion / insertion curves (fractions k/N of the pixels), "
        "e.g. --faithfulness-steps 10 (default: 20).",
    )
    trust.add_argument(
        "--sanity",
        action="store_true",
        help="also run the model-parameter randomisation check (Adebayo et al.): flags methods whose maps "
        "do not depend on the model's weights (a warning, not exit 1). Costs one audit per stage, "
        "e.g. --sanity --sanity-stages 2.",
    )
    trust.add_argument(
        "--sanity-stages",
        type=_positive_int,
        default=4,
        metavar="N",
        help="cumulative randomisation stages of --sanity, from the output end, e.g. --sanity-stages 2 (default: 4).",
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
        help="replace the audit already in --out once this audit is written (into a new folder beside --out, "
        "then renamed into place); a run that fails leaves the previous audit as it was, with its error.log "
        "beside it, e.g. --out audits/latest --overwrite.",
    )
    _add_export_parser(commands)
    return parser


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export-probes",
        help="write a probe folder (images, masks, labels.csv, manifest.json) from a Dataset",
        description=(
            "Write the probe folder 'lightning-sas audit' reads from a map-style Dataset returned by an\n"
            "importable callable: images as PNG (de-normalised with --mean/--std), ROI masks in masks/,\n"
            "labels.csv and manifest.json (sha256 of every file). Exits 0, or 2 on any error."
        ),
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "--dataset",
        required=True,
        metavar="MODULE:CALLABLE",
        help="a callable taking no arguments that returns the Dataset, imported like --model, "
        "e.g. --dataset my_project.data:make_val_split.",
    )
    export.add_argument(
        "--out", required=True, metavar="DIR", help="the probe folder to write (new or empty), e.g. --out probes."
    )
    export.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="export N items, balanced over the classes and seeded (default: every item), e.g. --count 32.",
    )
    export.add_argument(
        "--indices",
        metavar="I,J,...",
        help="export exactly these data set indices instead of --count, e.g. --indices 3,17,42.",
    )
    export.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the --count selection, e.g. --seed 1 (default: 0)."
    )
    export.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="the normalisation mean of the data set's images, undone before writing (one value or one per "
        "channel), e.g. --mean 0.485 0.456 0.406 (default: none, images in [0, 1]).",
    )
    export.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="the normalisation standard deviation, e.g. --std 0.229 0.224 0.225 (default: none).",
    )
    export.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, written in labels.csv, e.g. --class-names benign,malignant.",
    )
    for name, what, default, example in (
        ("image", "image", '"image" / 0', "--image-key pixels"),
        ("label", "label", '"label" / 1', "--label-key target"),
        ("mask", "ROI mask", '"mask", else "roi" / none: a tuple\'s mask is read only when given',
         "--mask-key 2 for (image, label, roi_mask) items, or --mask-key ruler_mask"),
    ):  # fmt: skip
        export.add_argument(
            f"--{name}-key",
            metavar="KEY|POSITION",
            help=f"where the {what} of an item is: a key of mapping items or a position in tuple items "
            f"(default: {default}), e.g. {example}.",
        )


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
    if args.artifact_class is not None and args.artifacts is None:
        raise UsageError(
            f"--artifact-class {args.artifact_class} needs --artifacts DIR, the artifact examples to paste."
        )
    if args.artifacts is not None and args.artifact_class is None:
        raise UsageError(
            f"--artifacts {args.artifacts} needs --artifact-class NAME|INDEX, the class the artifact is suspected "
            "to push predictions to (e.g. --artifact-class malignant)."
        )
    for option, value in (("--probe", args.probe), ("--masks", args.masks), ("--artifacts", args.artifacts)):
        if value is not None and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: no such folder.")
    for option, value in (("--labels", args.labels), ("--baseline", args.baseline), ("--config", args.config)):
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
    rule: AlertRule
    artifacts: ArtifactFolder | None = None
    artifact_class: int | None = None
    #: Constructor arguments as (option and value, arguments, class_path), in the order they apply.
    init_args: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)


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
    rule = AlertRule(
        min_enrichment=args.min_enrichment,
        min_flip_rate=args.min_flip_rate,
        max_roi_share=args.shortcut_threshold,
        min_roi_pixels=args.min_roi_pixels,
    )
    artifacts, artifact_class = None, None
    if args.artifacts is not None:
        from lightning_sas.probe_folder import class_index, read_artifact_folder

        try:
            artifact_class = class_index(args.artifact_class, class_names, source="--class-names")
        except ProbeFolderError as error:
            raise UsageError(f"--artifact-class {error}") from None
        try:
            artifacts = read_artifact_folder(
                args.artifacts, size=image_size, channels=args.channels, probe_file_sizes=folder.file_sizes
            )
        except ProbeFolderError as error:
            raise UsageError(f"--artifacts {error}") from None
    return AuditInputs(
        class_names, method_names, image_size, mean, std, folder, baseline, rule, artifacts, artifact_class,
        _read_init_args(args),
    )  # fmt: skip


def _read_init_args(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str | None]]:
    """``--config`` and ``--init-args`` read (not yet checked against the model), in the order they apply.

    Raises:
        UsageError: For a config file that is not YAML or has no ``model:`` mapping, or an
            ``--init-args`` that is neither ``key=value`` nor a mapping.
    """
    from lightning_sas.checkpoint import parse_init_args, read_config

    sources: list[tuple[str, dict[str, Any], str | None]] = []
    if args.config is not None:
        try:
            sources.append((f"--config {args.config}", *read_config(args.config)))
        except ModelLoadError as error:
            raise UsageError(f"--config {error}") from None
    for text in args.init_args:
        try:
            sources.append((f"--init-args {text!r}", parse_init_args(text), None))
        except ModelLoadError as error:
            raise UsageError(f"--init-args {error}") from None
    return sources


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


def _load_model(
    model_class: type[LightningModule], args: argparse.Namespace, device: torch.device, init_args: dict[str, Any]
) -> LightningModule:
    from lightning_sas.checkpoint import load_checkpoint

    with _stage(f"loading --checkpoint {args.checkpoint} into {model_class.__name__}"):
        try:
            return load_checkpoint(
                model_class,
                args.checkpoint,
                device,
                trust=args.trust_checkpoint,
                trust_hint="re-run with --trust-checkpoint",
                init_args=init_args,
                init_args_hint="give it with --init-args NAME=VALUE or in the model: section of --config FILE.yaml",
            )
        except ModelLoadError as error:
            raise UsageError(f"--checkpoint {error}") from None


def check_gradcam_layer(model: torch.nn.Module, methods: Mapping[str, AttributionMethod], given: str | None) -> None:
    """Look up Grad-CAM's ``target_layer`` in ``model`` before anything runs: a typo fails at once.

    Raises:
        UsageError: If the name is no module of ``model``, with the closest name (``given`` is
            ``--gradcam-layer``; another name came from ``--method-config``).
    """
    from lightning_sas.checkpoint import check_module_name

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
    from lightning_sas.outputs import ClassifierOutput

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
        return int(class_logits(selected, None, shape[0]).shape[1])
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


def _config_value(text: str) -> object:
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
    from lightning_sas.audit import resolve_methods
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


# ----------------------------------------------------------------------------- audit

#: Seconds an audit runs before its progress bar appears (on a terminal): short audits show none.
PROGRESS_DELAY = 3.0


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A tqdm bar on stderr counting model passes, shown when stderr is a terminal (not under cron)
    and only once the audit has run :data:`PROGRESS_DELAY` seconds."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        unit="pass",
        unit_scale=True,
        leave=False,
        delay=PROGRESS_DELAY,
        desc="auditing",
    )
    try:
        yield bar
    finally:
        bar.close()


def _duration(seconds: float) -> str:
    """A rough duration for people.

    Example:
        >>> _duration(0.2), _duration(42.4), _duration(300), _duration(9000)
        ('under 1 s', '42 s', '5.0 min', '2.5 h')
    """
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(
    model: torch.nn.Module,
    images: torch.Tensor,
    passes: Mapping[str, tuple[int, bool]],
    output: OutputSelector = None,
) -> str | None:
    """The stderr line that announces the audit's cost, or ``None`` if one pass cannot be timed.

    One forward (and one forward + backward) of the model on the probes is timed and scaled to
    ``passes`` (from :func:`lightning_sas.cost.audit_passes`).
    """
    from lightning_sas.cost import estimate_audit

    try:
        cost = estimate_audit(model, images, dict(passes), output)
    except Exception:  # noqa: BLE001 - only a courtesy: the audit's own steps report real problems
        return None
    total = sum(count for count, _ in passes.values())
    parts = ", ".join(f"{name} {count:,}" for name, (count, _) in passes.items())
    line = (
        f"{PROGRAM}: estimated audit time {_duration(cost.seconds)} on {cost.device} ({total:,} model passes: {parts})"
    )
    if cost.seconds > 600:
        line += "; --sas-iterations, fewer probes, --no-faithfulness or a GPU shorten it"
    return line


def write_tensorboard(
    out: Path,
    pictures: dict[str, np.ndarray],
    scalars: dict[str, float],
    texts: dict[str, str],
    layout: Mapping[str, Mapping[str, list]],
) -> None:
    """TensorBoard events in ``out``: the callback's tags and chart layout at step 0, flushed and closed."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sas.audit_logging import write_layout, write_pictures, write_text

    logger = TensorBoardLogger(save_dir=str(out), name="", version="", default_hp_metric=False)
    try:
        write_layout([logger], layout)
        write_pictures([logger], pictures, step=0)
        for tag, text in texts.items():
            write_text([logger], tag, text, step=0)
        logger.log_metrics(scalars, step=0)
    finally:
        logger.experiment.flush()
        logger.experiment.close()


def _sanity_warning(summary: Mapping[str, Any]) -> str | None:
    sanity = summary.get("sanity")
    if not sanity or not sanity["flagged"]:
        return None
    finals = ", ".join(f"{name} {sanity['similarity'][name][-1]:.2f}" for name in sanity["flagged"])
    return (
        f"the maps of {', '.join(sanity['flagged'])} do not depend on the model's weights: with every "
        f"parameter randomised they stay similar to the trained model's maps (Spearman {finals} > "
        f"{sanity['threshold']:g}); they explain the image, not the model"
    )


def _texts(summary: dict[str, Any], problems: Sequence[str]) -> dict[str, str]:
    """The callback's text tags: ``audit/manifest`` always (class names, not indices),
    ``audit/alert`` when the alert rule fired, the audit has problems or the sanity check flags;
    ``audit/gradcam/layer``, the layer Grad-CAM explained."""
    from lightning_sas.audit_logging import manifest_markdown
    from lightning_sas.probes import class_label
    from lightning_sas.report import verdict_text

    class_names = summary.get("class_names")
    manifest = [{**item, "label": class_label(item["label"], class_names)} for item in summary["manifest"]]
    texts = {"audit/manifest": manifest_markdown(manifest)}
    # The layer a method explained (Grad-CAM's, given or automatic) under audit/<method>/layer.
    texts.update({f"audit/{name}/layer": info["layer"] for name, info in summary["methods"].items() if "layer" in info})
    alerts = [verdict_text(summary)] if summary["verdict"]["alert"] else []
    alerts += list(problems)
    warning = _sanity_warning(summary)
    if warning:
        alerts.append(f"sanity check: {warning}")
    if alerts:
        texts["audit/alert"] = "\n\n".join(alerts)
    return texts


def _unchecked_methods(summary: dict[str, Any]) -> list[str]:
    """Methods with no finite score on any probe with a mask (so their ROI criteria could not be checked)."""
    return [
        name for name, means in summary["methods"].items() if means["probes_with_mask"] and means["roi_share"] is None
    ]


def _incomplete(summary: dict[str, Any]) -> list[str]:
    """What makes the audit incomplete (exit status 2), one phrase each."""
    from lightning_sas.report import AUDIT_PARTS

    failed = []
    for name, message in summary["errors"].items():
        if name == "sanity":
            failed.append(f"the sanity check failed ({_one_line(message)})")
        elif name == "intervention":
            failed.append(f"the intervention could not be measured ({_one_line(message)})")
        elif name in AUDIT_PARTS:
            failed.append(f"{name} could not be scored ({_one_line(message)})")
        else:
            failed.append(f"{name} failed ({_one_line(message)})")
    failed += [f"{name} has no finite score on any probe with a mask" for name in _unchecked_methods(summary)]
    return failed


def _run_record(
    args: argparse.Namespace,
    inputs: AuditInputs,
    model_class: type[LightningModule],
    device: torch.device,
    command: list[str],
    methods: Mapping[str, AttributionMethod],
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
        "method_settings": {name: repr(method) for name, method in methods.items()},
    }


def _artifacts_record(args: argparse.Namespace, folder: ArtifactFolder) -> dict[str, Any]:
    return {
        "folder": str(args.artifacts),
        "files": list(folder.names),
        "file_sha256": list(folder.file_hashes),
        "mask_sources": list(folder.mask_sources),
        "full_size": folder.full_size,
        "trials": args.artifact_trials,
        "seed": ARTIFACT_SEED,
    }


#: Seed of the artifact pastes (positions and examples) and of the sanity check's re-initialisation.
ARTIFACT_SEED = 0
SANITY_SEED = 0


def run_audit_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas audit``; returns the exit status.

    Returns:
        0 (the alert rule did not fire), 1 (it fired: :func:`lightning_sas.verdict.decide`) or 2
        (the audit is incomplete; the outputs are written all the same).

    Raises:
        UsageError: For any usage or input problem.
        _Failure: For an unexpected exception, naming the step it happened in.
    """
    with _stage("reading the inputs"):
        inputs = read_inputs(args)
    out = Path(args.out)

    model_class = _import_model(args.model)
    try:
        init_args = merge_init_args(model_class, inputs.init_args)
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    output = resolve_output(args.output)
    methods = build_methods(inputs.method_names, args.sas_iterations, args.gradcam_layer, args.method_config)
    device = resolve_device(args.device)
    model = _load_model(model_class, args, device, init_args)
    check_gradcam_layer(model, methods, args.gradcam_layer)
    with _stage("preparing the probe images"):
        from lightning_sas.probe_folder import to_probes

        probes = to_probes(inputs.folder, inputs.mean, inputs.std, device)
    num_classes = check_model_output(model, probes.images, output, args.output)
    with _stage("finding the layer Grad-CAM explains"):
        details = explained_layers(model, methods, probes.images, output)
    artifacts = None
    if inputs.artifacts is not None and inputs.artifact_class is not None:
        if inputs.artifact_class >= num_classes:
            raise UsageError(
                f"--artifact-class {args.artifact_class}: class index {inputs.artifact_class} is not a class of "
                f"the model, which has {num_classes} classes (0..{num_classes - 1})."
            )
        with _stage(f"preparing the artifacts of --artifacts {args.artifacts}"):
            from lightning_sas.probe_folder import to_artifacts

            artifacts = to_artifacts(
                inputs.artifacts,
                inputs.mean,
                inputs.std,
                target_class=inputs.artifact_class,
                trials=args.artifact_trials,
                seed=ARTIFACT_SEED,
                device=device,
            )
    from lightning_sas.cost import audit_passes
    from lightning_sas.faithfulness import Faithfulness

    faithfulness = None if args.no_faithfulness else Faithfulness(steps=args.faithfulness_steps)
    passes = audit_passes(
        methods,
        len(probes),
        faithfulness_steps=None if faithfulness is None else faithfulness.steps,
        intervention_trials=None if artifacts is None else artifacts.trials,
        sanity_stages=args.sanity_stages if args.sanity else 0,
    )
    with _stage("timing one model pass"):
        line = estimate_line(model, probes.images, passes, output)
    if line:
        print(line, file=sys.stderr, flush=True)

    from lightning_sas.audit import run_audit
    from lightning_sas.progress import reporting

    explaining = _stage(f"explaining the probes with {', '.join(methods)}")
    with _progress(sum(count for count, _ in passes.values())) as bar, reporting(bar.update), explaining:
        result = run_audit(
            model,
            probes,
            methods,
            target=args.target,
            progress=lambda name: bar.set_description(name, refresh=False),
            output=output,
            artifacts=artifacts,
            faithfulness=faithfulness,
            sanity_stages=args.sanity_stages if args.sanity else 0,
            sanity_seed=SANITY_SEED,
        )
    with _stage("building the report"):
        from lightning_sas import report
        from lightning_sas.audit import problems
        from lightning_sas.audit_logging import audit_scalars, render_audit, scalar_layout
        from lightning_sas.verdict import decide

        flagged = [] if result.sanity is None else result.sanity.flagged
        verdict = decide(result.evidence(sanity_flagged=flagged), inputs.rule)
        summary = report.build_summary(
            result,
            probes,
            skipped=inputs.folder.skipped,
            file_hashes=inputs.folder.file_hashes,
            verdict=verdict,
            rule=inputs.rule,
            class_names=inputs.class_names,
            run=_run_record(args, inputs, model_class, device, command, methods),
            faithfulness=faithfulness,
            artifacts=None if inputs.artifacts is None else _artifacts_record(args, inputs.artifacts),
            sanity=result.sanity,
            method_details=details,
        )
        if inputs.baseline is not None:
            summary["baseline"] = report.compare_with_baseline(
                summary, inputs.baseline, baseline_path=str(args.baseline), tolerance=args.baseline_tolerance
            )
        issues = problems(result, probes.names)
        scalars = audit_scalars(result)
        display = {"mean": inputs.mean, "std": inputs.std}
        title = f"{model_class.__name__} {Path(args.checkpoint).name}"
        pictures = (
            render_audit(result, probes, **display, class_names=inputs.class_names, title=title) if result.maps else {}
        )
        html_pictures = report.probe_pictures(result, probes, **display)
    with _stage(f"writing to --out {args.out}"):
        staged = None
        try:
            # A new folder beside --out, renamed into place once complete: a failure keeps the previous audit.
            staged = report.staging_folder(out)
            layout = scalar_layout(
                list(methods),
                roi=bool(probes.roi.any()),
                faithfulness=faithfulness is not None,
                intervention=artifacts is not None,
            )
            write_tensorboard(staged, pictures, scalars, _texts(summary, issues), layout)
            report.write_summary(summary, staged / "summary.json")
            report.write_report(summary, html_pictures, staged / "report.html")
            _check_out(args)  # again: another run may have written an audit there meanwhile
            report.put_in_place(staged, out, previous_audit_files(out))
        except OSError as error:
            raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)  # still there only when not put in place

    _print_summary(summary, issues, out)
    incomplete = _incomplete(summary)
    if incomplete:
        print(
            f"{PROGRAM}: {'warning' if verdict.alert else 'error'}: the audit is incomplete: {'; '.join(incomplete)}; "
            f"{out / 'summary.json'} and {out / 'report.html'} list it.",
            file=sys.stderr,
        )
    if verdict.alert:  # a criterion that fired is never hidden by a part that failed
        return EXIT_SHORTCUT
    if verdict.status == "cannot tell" and verdict.not_checkable:
        print(f"{PROGRAM}: error: {verdict.summary()}.", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR if incomplete else EXIT_OK


def _format_number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _print_summary(summary: dict[str, Any], issues: Sequence[str], out: Path) -> None:
    from lightning_sas.report import method_errors, verdict_text

    methods = [*summary["methods"], *method_errors(summary)]
    print(
        f"{PROGRAM}: audited {len(summary['probes'])} probe(s) with {', '.join(methods)} "
        f"in {summary['seconds']:.1f} s ({len(summary['skipped'])} skipped)"
    )
    for item in summary["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    for name, means in summary["methods"].items():
        scored = (
            f", {means['probes_scored']} scored"
            if means.get("probes_scored", means["probes_with_mask"]) != means["probes_with_mask"]
            else ""
        )
        faithfulness = ""
        if "deletion_auc" in means:
            faithfulness = (
                f"; deletion AUC {_format_number(means['deletion_auc'])}, "
                f"insertion AUC {_format_number(means['insertion_auc'])}"
            )
        print(
            f"  {name}: roi_enrichment {_format_number(means.get('roi_enrichment'))}, "
            f"mean roi_share {_format_number(means['roi_share'])} "
            f"(lift {_format_number(means.get('roi_lift'), 2)}x chance), "
            f"roi_mass {_format_number(means['roi_mass'])} "
            f"({means['probes_with_mask']} probe(s) with a mask{scored}){faithfulness}"
        )
    intervention = summary.get("intervention")
    if intervention:
        change = intervention["mean_probability_change"]
        change = "–" if change is None else f"{change:+.3f}"
        print(
            f"  intervention: pasting {intervention['folder']} ({len(intervention['files'])} file(s), "
            f"{intervention['trials']} paste(s) per probe) onto {intervention['eligible_probes']} probe(s) not "
            f"predicted as {intervention['target_class_name']}: flip rate "
            f"{_format_number(intervention['flip_rate'])}, mean probability change {change}"
        )
    sanity = summary.get("sanity")
    if sanity:
        similarities = "; ".join(
            f"{name} {' → '.join(_format_number(value, 2) for value in values)}"
            for name, values in sanity["similarity"].items()
        )
        print(f"  sanity check ({len(sanity['stages'])} stage(s), similarity to the trained maps): {similarities}")
        warning = _sanity_warning(summary)
        if warning:
            print(f"  warning: {warning}")
    for issue in issues:
        print(f"  problem: {issue}")
    baseline = summary.get("baseline")
    if baseline:
        print(
            f"  against {baseline['file']}: {len(baseline['flagged_probes'])} probe(s) flagged, "
            f"methods with a changed mean: {', '.join(baseline['flagged_methods']) or 'none'}"
        )
    print(f"{PROGRAM}: {verdict_text(summary)}")
    print(f"report: {out / 'report.html'}")


# ----------------------------------------------------------------------------- export-probes


def _check_export_out(out: Path) -> None:
    """``--out`` of export-probes: a folder (or none yet); a previous run's error.log is removed.

    Whether the folder may take the export (new, empty, or a previous export) is
    :func:`~lightning_sas.export.export_probes`'s decision.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; give a folder for the probes.")
    log = out / ERROR_LOG
    if log.is_file():
        try:
            log.unlink()
        except OSError as error:
            raise UsageError(
                f"--out {out}: cannot remove the previous {ERROR_LOG} ({error.strerror or error})."
            ) from None


def _parse_indices(text: str | None) -> list[int] | None:
    """``--indices 3,17,42`` (or with spaces).

    Example:
        >>> _parse_indices("3, 17 42")
        [3, 17, 42]
    """
    if text is None:
        return None
    parts = text.replace(",", " ").split()
    if not parts or not all(re.fullmatch(r"\d+", part) for part in parts):
        raise UsageError(f"--indices takes data set indices >= 0, e.g. --indices 3,17,42, got {text!r}.")
    return [int(part) for part in parts]


def run_export_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas export-probes``; returns the exit status (0).

    Raises:
        UsageError: For any usage or input problem (also a data set that cannot be exported).
        _Failure: For an unexpected exception (in the data set's code, or a bug).
    """
    from lightning_sas.normalization import check_normalization

    spec = args.dataset
    if not re.fullmatch(SPEC_PATTERN, spec):
        raise UsageError(f"--dataset must be 'package.module:callable', got {spec!r}.")
    if args.count is not None and args.indices is not None:
        raise UsageError("give --count (a seeded, class-balanced selection) or --indices, not both.")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}.")
    indices = _parse_indices(args.indices)
    try:
        mean, std = check_normalization(_float_list(args.mean, "--mean"), _float_list(args.std, "--std"), prefix="--")
    except ValueError as error:
        raise UsageError(str(error)) from None
    class_names = _name_list(args.class_names)
    keys = {
        name: int(value) if value.isdigit() else value
        for name in ("image", "label", "mask")
        if (value := getattr(args, f"{name}_key")) is not None
    }
    out = Path(args.out)
    _check_export_out(out)

    from lightning_sas.checkpoint import import_object

    with _stage(f"importing --dataset {spec}"):
        try:
            factory = import_object(spec)
        except ModelLoadError as error:
            raise UsageError(f"--dataset {error}") from None
    if not callable(factory):
        raise UsageError(f"--dataset {spec} is a {type(factory).__name__}, not a callable returning a Dataset.")
    with _stage(f"calling --dataset {spec}"):
        dataset = factory()
    with _stage(f"exporting the data set of --dataset {spec} to --out {args.out}"):
        from lightning_sas.export import ExportError, ExportFolderError, ItemKeyError, export_probes

        try:
            export_probes(
                dataset,
                out,
                count=args.count,
                indices=indices,
                seed=args.seed,
                mean=mean,
                std=std,
                class_names=class_names,
                item_keys=keys or None,
            )
        except ExportFolderError as error:
            raise UsageError(f"--out {error}") from None
        except ItemKeyError as error:
            kind = "its position" if isinstance(error.where, int) else "its key"
            raise UsageError(f"--dataset {spec}: {error.detail}; give {kind} with --{error.field}-key.") from None
        except ExportError as error:
            raise UsageError(f"--dataset {spec}: {error}") from None
        except OSError as error:
            raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
    import json

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entries = manifest["probes"]
    masked = sum(entry["mask"] is not None for entry in entries)
    clipped = [entry["file"] for entry in entries if entry["clipped"] > 0.01]
    if clipped:
        print(
            f"{PROGRAM}: warning: over 1% of the pixel values of {len(clipped)} image(s) (e.g. {clipped[0]}) were "
            "outside [0, 1] after de-normalisation and were clipped; are --mean/--std those of the data set?",
            file=sys.stderr,
        )
    options = f"--probe {out} --labels {out / 'labels.csv'}" + (f" --masks {out / 'masks'}" if masked else "")
    if mean is not None:
        options += f" --mean {' '.join(f'{value:g}' for value in mean)}"
    if std is not None:
        options += f" --std {' '.join(f'{value:g}' for value in std)}"
    if class_names is not None:
        options += f" --class-names {','.join(class_names)}"
    print(f"{PROGRAM}: exported {len(entries)} probe(s) ({masked} with a mask) to {out}")
    if not masked and args.mask_key is None:
        print(
            'note: no item had an ROI mask under "mask" or "roi"; for tuple items give its position, e.g. --mask-key 2'
        )
    print(f"audit them with: {PROGRAM} audit {options} --checkpoint ... --model ... --out ...")
    return EXIT_OK


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
    """Run the command line; returns the exit status (0 ok, 1 the alert rule fired, 2 error).

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
    run = run_export_command if args.command == "export-probes" else run_audit_command
    try:
        return run(args, command)
    except UsageError as error:
        print(f"{PROGRAM}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug or a failure in user code: one line, traceback to a file
        _report_unexpected(error, args, command)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
