"""The ``argparse`` parser of ``lightning-sas``: its subcommands, and the options of ``audit``.

``export-probes``'s options are in :mod:`lightning_sas.cli.export_parser`; the long help texts
(examples, file layouts, exit statuses) are in :mod:`lightning_sas.cli.help_texts`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from lightning_sas.audit.verdict import DEFAULT_MIN_ENRICHMENT, DEFAULT_MIN_FLIP_RATE, DEFAULT_MIN_ROI_PIXELS
from lightning_sas.cli.errors import PROGRAM
from lightning_sas.cli.explain_parser import add_explain_parser
from lightning_sas.cli.export_parser import add_export_parser
from lightning_sas.cli.help_texts import AUDIT_EPILOG, ENRICHMENT_DEFAULTS
from lightning_sas.cli.job_file import apply_job
from lightning_sas.cli.options import (
    CommandLineWins,
    add_channels_argument,
    add_method_arguments,
    at_least_two,
    device_spec,
    off_or,
    positive_int,
    unit_float,
)
from lightning_sas.cli.scale_parser import add_scale_options

__all__ = ["build_parser"]


def build_parser(job: tuple[str, Mapping[str, Any]] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``lightning-sas`` with its ``audit`` and ``export-probes`` subcommands.

    Args:
        job: ``(how messages name the file, options)`` of a job file's ``audit:`` section: the
            audit's defaults (:mod:`~lightning_sas.cli.job_file`).
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Audit image classifiers trained with PyTorch Lightning: which pixels drive their decisions.",
        epilog=f"run '{PROGRAM} audit --help', '{PROGRAM} explain --help' or '{PROGRAM} export-probes --help' "
        "for options, examples and exit status.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    audit = _add_audit_parser(commands)
    if job is not None:
        apply_job(audit, *job)
    add_export_parser(commands)
    add_explain_parser(commands)
    return parser


def _add_audit_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``audit`` subcommand and its option groups, in the order ``--help`` lists them."""
    audit = commands.add_parser(
        "audit",
        help="audit a saved checkpoint on a folder of probe images",
        description=(
            "Explain a folder of probe images with a saved LightningModule checkpoint (SaS, Grad-CAM),\n"
            "score the maps against region-of-interest masks, and write TensorBoard events, report.html\n"
            "and summary.json to --out. Exits 1 exactly when the alert rule fires, 2 on any error."
        ),
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = audit.add_argument_group("inputs")
    _add_model_inputs(inputs)
    _add_probe_inputs(inputs)
    _add_preprocessing_options(audit.add_argument_group("preprocessing"))
    _add_method_options(audit.add_argument_group("audit"))
    trust = audit.add_argument_group("alert rule and trust checks")
    _add_alert_rule_options(trust)
    _add_trust_check_options(trust)
    _add_discovery_options(trust)
    _add_output_options(audit.add_argument_group("outputs"))
    add_scale_options(audit.add_argument_group("many checkpoints, processes and the cache"))
    return audit


def _add_model_inputs(group: argparse._ArgumentGroup) -> None:
    """Options of the audit naming the checkpoint, the model class, its output and its constructor."""
    group.add_argument(
        "--checkpoint",
        required=True,
        action=CommandLineWins,
        default=[],
        metavar="PATH",
        help="Lightning checkpoint file (.ckpt, from Trainer.save_checkpoint) to audit, e.g. runs/last.ckpt; "
        "repeatable, and a folder (its .ckpt files, recursively) or a quoted glob, e.g. 'runs/*/epoch=*.ckpt'. "
        "With several, each is audited into <out>/checkpoints/<name>/ and <out> gets the combined summary.json "
        "and report.html, ordered by training step (see --gate).",
    )
    group.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="import path of the LightningModule class, e.g. my_project.models:LesionClassifier "
        "(the module must be importable: install the project or set PYTHONPATH).",
    )
    group.add_argument(
        "--output",
        metavar="SPEC",
        help="where the logits are in the model's output, for models returning a tuple, list or dict: "
        "an index (e.g. --output 0), a key (e.g. --output logits) or module:function, a callable "
        "mapping the output to logits (e.g. --output my_project.heads:logits_of). Not needed for "
        "[B, C] logits or a single binary logit [B] / [B, 1].",
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs unpickling arbitrary Python objects, e.g. custom classes in its "
        "hyper-parameters. Loading such a file can run code from it: only for checkpoints you trust. "
        "By default only weights and plain types are loaded.",
    )
    group.add_argument(
        "--init-args",
        action="append",
        default=[],
        metavar="ARGS",
        help="constructor arguments of --model, for those the checkpoint does not hold (not saved with "
        "save_hyperparameters()) or that should differ: key=value (the value read as YAML) or a JSON/YAML "
        "mapping, repeatable, e.g. --init-args num_classes=3 or --init-args '{\"num_classes\": 3}'. "
        "They win over the saved hyper-parameters and --config.",
    )
    group.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="a YAML file: its model: section (LightningCLI's: init_args:, with an optional class_path: naming "
        "--model's class, or the arguments directly) gives constructor arguments that win over the saved "
        "hyper-parameters; its audit: section gives this command's options (keys as the options without "
        "dashes, e.g. 'probe: probes/images'; the command line wins), so a nightly job can be one file, "
        "e.g. --config configs/nightly.yaml (other sections are ignored).",
    )


def _add_probe_inputs(group: argparse._ArgumentGroup) -> None:
    """Options of the audit naming the probe images, their masks, labels and class names."""
    group.add_argument(
        "--probe", required=True, metavar="DIR", help="folder of probe images (png/jpg/...), e.g. probes/images."
    )
    group.add_argument(
        "--masks",
        metavar="DIR",
        help="folder of region-of-interest masks with the probes' file names, nonzero = ROI, e.g. probes/rulers. "
        "Probes without a mask are audited but not scored.",
    )
    group.add_argument(
        "--object-masks",
        metavar="DIR",
        help="folder of object masks with the probes' file names, nonzero = where the legitimate evidence is "
        "(e.g. lesion segmentations), e.g. probes/lesions: evidence outside the object is suspect, and shortcut "
        "discovery proposes candidates only outside it.",
    )
    group.add_argument(
        "--labels", metavar="FILE.csv", help="CSV of 'filename,label' rows (true classes), e.g. probes/labels.csv."
    )
    group.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, used in the report and in --labels, e.g. benign,malignant.",
    )
    group.add_argument(
        "--probes-from-checkpoint",
        nargs="?",
        const="",
        metavar="NAME",
        help="audit exactly the probes the training callback recorded in each checkpoint (its manifest, from "
        "probe=ProbeFolderDataset(...)): those files of --probe, in that order, checked by content hash (a "
        "changed file, or other --image-size/--channels/--mean/--std than in training, exits 2). NAME: the "
        "callback's name, needed when a checkpoint holds several, e.g. --probes-from-checkpoint or "
        "--probes-from-checkpoint val_audit (in --config: 'probes-from-checkpoint: true').",
    )


def _add_preprocessing_options(group: argparse._ArgumentGroup) -> None:
    """How the audit turns probe images into model inputs: size, channels, normalisation."""
    group.add_argument(
        "--image-size",
        nargs="+",
        default=["224"],
        metavar="N",
        help="images (and masks) are resized to N x N pixels, or H x W given as 'H W' or HxW, "
        "e.g. --image-size 224 or --image-size 192x256 (default: 224).",
    )
    add_channels_argument(group)
    group.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="normalisation mean: one value for every channel or one per channel, "
        "e.g. --mean 0.485 0.456 0.406 (default: none, inputs in [0, 1]).",
    )
    group.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="normalisation standard deviation: one value for every channel or one per channel, "
        "e.g. --std 0.229 0.224 0.225 (default: none).",
    )


def _add_method_options(group: argparse._ArgumentGroup) -> None:
    """The attribution methods of the audit, their settings, the target class and the device."""
    add_method_arguments(group, example="gradcam")
    group.add_argument(
        "--sas-iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="optimisation steps of SaS (same as --method-config sas.iterations=N); fewer is faster and "
        "coarser, e.g. --sas-iterations 20 (default: SaS's own).",
    )
    group.add_argument(
        "--gradcam-layer",
        metavar="NAME",
        help="module name of the layer Grad-CAM explains, checked once the model is loaded, e.g. "
        "--gradcam-layer model.layer4 (default: found automatically, the last spatial feature map; the "
        "layer explained is in summary.json, the report and TensorBoard).",
    )
    group.add_argument(
        "--target",
        choices=("pred", "label"),
        default="pred",
        help="class to explain: the model's prediction (pred, default) or the true label from --labels "
        "(label; every probe needs one), e.g. --target label.",
    )
    group.add_argument(
        "--device",
        type=device_spec,
        default="auto",
        help="where to run one process: auto (the GPU when there is one, default), cpu, cuda, cuda:N or mps, "
        "e.g. --device cuda:1 (for several devices, see --devices).",
    )


def _add_alert_rule_options(group: argparse._ArgumentGroup) -> None:
    """The thresholds of the alert rule (exit status 1)."""
    group.add_argument(
        "--min-enrichment",
        type=off_or(unit_float),
        default=DEFAULT_MIN_ENRICHMENT,
        metavar="E",
        help="exit 1 when a voting method's ROI enrichment (0 = chance, 1 = every top-ranked pixel on the "
        f"masks) is above E, e.g. --min-enrichment 0.3 (default: per method, {ENRICHMENT_DEFAULTS}, the training "
        "callback's rule; 'off' switches it off).",
    )
    group.add_argument(
        "--min-roi-pixels",
        type=positive_int,
        default=DEFAULT_MIN_ROI_PIXELS,
        metavar="N",
        help="probes whose mask has fewer pixels are left out of the ROI criteria, e.g. --min-roi-pixels 25 "
        f"(default: {DEFAULT_MIN_ROI_PIXELS}).",
    )
    group.add_argument(
        "--min-flip-rate",
        type=off_or(unit_float),
        default=DEFAULT_MIN_FLIP_RATE,
        metavar="F",
        help="with --artifacts: exit 1 when the share of pastes that flip a prediction to --artifact-class "
        f"is above F, e.g. --min-flip-rate 0.5 (default: {DEFAULT_MIN_FLIP_RATE:g}; 'off' switches it off).",
    )
    group.add_argument(
        "--shortcut-threshold",
        type=unit_float,
        default=None,
        metavar="T",
        help="also exit 1 when a method's mean roi_share over the probes with a mask is above T "
        "(an absolute criterion, off by default: it punishes small artifacts), e.g. --shortcut-threshold 0.5.",
    )


def _add_trust_check_options(group: argparse._ArgumentGroup) -> None:
    """The intervention (artifact pastes), the faithfulness scores and the sanity check."""
    group.add_argument(
        "--artifacts",
        metavar="DIR",
        help="folder of artifact examples (patches and masks, see 'artifacts folder' below) to paste onto "
        "the probes, e.g. --artifacts probes/ruler_patches; needs --artifact-class.",
    )
    group.add_argument(
        "--artifact-class",
        metavar="NAME|INDEX",
        help="the class the artifact is suspected to push predictions to: a name from --class-names or an "
        "index, e.g. --artifact-class malignant. Required with --artifacts.",
    )
    group.add_argument(
        "--artifact-trials",
        type=positive_int,
        default=4,
        metavar="N",
        help="pastes per probe (positions / examples, seeded), e.g. --artifact-trials 8 (default: 4).",
    )
    group.add_argument(
        "--no-faithfulness",
        action="store_true",
        help="skip the deletion / insertion faithfulness scores of the maps (on by default; they cost "
        "2 x (steps - 1) forwards per method and probe), e.g. --no-faithfulness for a quicker audit.",
    )
    group.add_argument(
        "--faithfulness-steps",
        type=at_least_two,
        default=20,
        metavar="N",
        help="points of the deletion / insertion curves (fractions k/N of the pixels), "
        "e.g. --faithfulness-steps 10 (default: 20).",
    )
    group.add_argument(
        "--sanity",
        action="store_true",
        help="also run the model-parameter randomisation check (Adebayo et al.): flags methods whose maps "
        "do not depend on the model's weights (a warning, not exit 1). Costs one audit per stage, "
        "e.g. --sanity --sanity-stages 2.",
    )
    group.add_argument(
        "--sanity-stages",
        type=positive_int,
        default=4,
        metavar="N",
        help="cumulative randomisation stages of --sanity, from the output end, e.g. --sanity-stages 2 (default: 4).",
    )


def _add_discovery_options(group: argparse._ArgumentGroup) -> None:
    """Shortcut discovery: when it runs and whose maps it reads."""
    group.add_argument(
        "--discovery",
        choices=("auto", "always", "never"),
        default="auto",
        help="look for shortcuts nobody named: recurring attributed regions (off the --object-masks, if given), "
        "transplanted onto probes of other classes; a confirmed one exits 1 and is exported to "
        "<out>/candidates/<k> in the --artifacts format. auto (default): when neither --masks nor --artifacts "
        "is given; needs at least 16 probes (more is better, e.g. 64), e.g. --discovery always.",
    )
    group.add_argument(
        "--discovery-method",
        metavar="NAME",
        help="whose maps discovery reads (one of --methods; default: occlusion, else sas, ...), "
        "e.g. --discovery-method sas.",
    )
    group.add_argument(
        "--discovery-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of discovery, repeatable, e.g. --discovery-config completion=True (grow regions to "
        "the whole thing they sit on) or --discovery-config trials=8 (docs/discovery.md lists them).",
    )


def _add_output_options(group: argparse._ArgumentGroup) -> None:
    """The baseline to compare with and the output folder."""
    group.add_argument(
        "--baseline",
        metavar="SUMMARY.json",
        help="summary.json of a previous audit: report per-probe and mean changes against it, "
        "e.g. --baseline audits/2024-05-01/summary.json.",
    )
    group.add_argument(
        "--baseline-tolerance",
        type=unit_float,
        default=0.05,
        metavar="D",
        help="roi_share changes larger than D against --baseline are flagged in the report, "
        "e.g. --baseline-tolerance 0.1 (default: 0.05). Flags do not change the exit status.",
    )
    group.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; one per audit: a folder that already holds an audit is refused "
        "unless --overwrite), e.g. audits/2024-05-02.",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the audit already in --out once this audit is written (into a new folder beside --out, "
        "then renamed into place); a run that fails leaves the previous audit as it was, with its error.log "
        "beside it, e.g. --out audits/latest --overwrite.",
    )
