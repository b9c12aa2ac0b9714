"""The audit's inputs, checked and read before the model is loaded: options, paths, probes, labels, baseline.

:func:`read_inputs` runs the cheap checks first (paths, the checkpoint's first bytes,
``--model``, ``--out``), then reads the probe and artifact folders, the labels, the baseline
and the constructor arguments into an :class:`AuditInputs`. With ``--probes-from-checkpoint``
the probes are those the checkpoints' audit callback recorded
(:mod:`lightning_sas.probes.checkpoint_manifest`), checked here, before any model is loaded.
:func:`read_normalization` and :func:`alert_rule` are shared with
:meth:`lightning_sas.callback.audit_callback.SASAuditCallback.from_config`, which reads the same options.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_sas.audit.verdict import AlertRule
from lightning_sas.cli.errors import ERROR_LOG, PROGRAM, UsageError
from lightning_sas.cli.model_import import SPEC_PATTERN, ModelLoadError
from lightning_sas.cli.options import float_list, name_list, parse_image_size
from lightning_sas.nightly.checkpoints import CheckpointEntry
from lightning_sas.probes.artifact_folder import ArtifactFolder
from lightning_sas.probes.errors import ProbeFolderError
from lightning_sas.probes.folder import ProbeFolder

__all__ = [
    "AUDIT_FILES",
    "AUDIT_FOLDERS",
    "EVENTS_PREFIX",
    "AuditInputs",
    "alert_rule",
    "check_out",
    "previous_audit_files",
    "read_init_args",
    "read_inputs",
    "read_normalization",
]

#: Files of a previous audit in ``--out`` (``--overwrite`` removes them); TensorBoard's event
#: files are matched by prefix.
AUDIT_FILES = ("summary.json", "report.html", "hparams.yaml")
EVENTS_PREFIX = "events.out.tfevents."
#: Folders an audit writes: exported discovery candidates, and each checkpoint's audit of a combined one.
AUDIT_FOLDERS = ("candidates", "checkpoints")
#: The options that decide a probe's tensor (and content hash), named when a recorded probe differs.
PREPROCESSING_OPTIONS = "--image-size, --channels, --mean and --std"


def previous_audit_files(out: Path) -> list[Path]:
    """Files of an earlier audit (or its error log) and its folders directly in ``out``, in name order."""
    if not out.is_dir():
        return []
    return sorted(
        path
        for path in out.iterdir()
        if (path.is_file() and (path.name in (*AUDIT_FILES, ERROR_LOG) or path.name.startswith(EVENTS_PREFIX)))
        or (path.is_dir() and path.name in AUDIT_FOLDERS)
    )


def check_out(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; give a folder (it is created if missing).")
    held = [path.name for path in previous_audit_files(out) if path.name not in (ERROR_LOG, *AUDIT_FOLDERS)]
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
    folders = (
        ("--probe", args.probe),
        ("--masks", args.masks),
        ("--object-masks", args.object_masks),
        ("--artifacts", args.artifacts),
    )
    for option, value in folders:
        if value is not None and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: no such folder.")
    for option, value in (("--labels", args.labels), ("--baseline", args.baseline), ("--config", args.config)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{option} {value}: no such file.")
    check_out(args)


def _read_checkpoints(args: argparse.Namespace) -> list[CheckpointEntry]:
    """``--checkpoint`` (files, folders, globs; repeatable): each file looked at, named and ordered by step.

    Raises:
        UsageError: For a value that names no checkpoint, or a file that is no checkpoint.
    """
    from lightning_sas.cli.checkpoint import check_checkpoint_file
    from lightning_sas.nightly.checkpoints import checkpoint_entries, expand_checkpoints

    if not args.checkpoint:  # a job file's empty list; the command line requires one
        raise UsageError("--checkpoint: give at least one checkpoint file, folder or glob, e.g. runs/last.ckpt.")
    try:
        files = expand_checkpoints(args.checkpoint)
    except ValueError as error:
        raise UsageError(f"--checkpoint {error}") from None
    for path in files:
        try:
            check_checkpoint_file(path)
        except ModelLoadError as error:
            raise UsageError(f"--checkpoint {error}") from None
    return checkpoint_entries(files)


def read_normalization(
    args: argparse.Namespace, defaults: tuple[list[float], list[float]] = ([0.0], [1.0])
) -> tuple[list[float], list[float]]:
    """``--mean`` / ``--std`` per channel, read by :mod:`lightning_sas.validation` (``defaults`` when absent).

    Raises:
        UsageError: If a value is not a number, a ``--std`` is not positive, or there are
            neither 1 nor ``--channels`` values.
    """
    from lightning_sas.validation import check_normalization, per_channel

    given = {"mean": float_list(args.mean, "--mean"), "std": float_list(args.std, "--std")}
    try:
        mean, std = check_normalization(given["mean"], given["std"], prefix="--")
    except ValueError as error:
        raise UsageError(str(error)) from None
    resolved = {}
    for name, values, default in (("mean", mean, defaults[0]), ("std", std, defaults[1])):
        try:
            resolved[name] = per_channel(name, values if values is not None else list(default), args.channels)
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
    #: The checkpoints to audit, ordered by training step.
    checkpoints: list[CheckpointEntry] = field(default_factory=list)


def read_inputs(args: argparse.Namespace) -> AuditInputs:
    """Check the options and read labels, probe images and baseline (no model needed yet).

    Raises:
        UsageError: For any usage or input problem.
    """
    _check_inputs(args)
    checkpoints = _read_checkpoints(args)
    image_size = parse_image_size(args.image_size)
    class_names = name_list(args.class_names)
    method_names = name_list(args.methods) or []
    if not method_names:
        raise UsageError("--methods needs at least one method name, e.g. --methods sas,gradcam.")
    mean, std = read_normalization(args)
    folder = _read_probes(args, class_names, image_size)
    if args.probes_from_checkpoint is not None:
        folder = _recorded_probes(args, [entry.path for entry in checkpoints], folder, (mean, std))
    _check_target_labels(args, folder)
    baseline = _read_baseline(args.baseline) if args.baseline else None
    rule = alert_rule(args)
    artifacts, artifact_class = None, None
    if args.artifacts is not None:
        artifacts, artifact_class = _read_artifacts(args, class_names, image_size, folder)
    return AuditInputs(
        class_names, method_names, image_size, mean, std, folder, baseline, rule, artifacts, artifact_class,
        read_init_args(args), checkpoints,
    )  # fmt: skip


def _read_probes(args: argparse.Namespace, class_names: list[str] | None, image_size: tuple[int, int]) -> ProbeFolder:
    """``--labels`` and ``--probe`` (with ``--masks``) read; a warning for labels of files not in ``--probe``.

    Raises:
        UsageError: For a bad labels file or probe folder, or a probe without a label under ``--target label``.
    """
    from lightning_sas.probes.folder import read_probe_folder
    from lightning_sas.probes.labels import read_labels

    labels: dict[str, int] = {}
    if args.labels:
        try:
            labels = read_labels(args.labels, class_names, class_names_source="--class-names")
        except ProbeFolderError as error:
            raise UsageError(f"--labels {error}") from None
    try:
        folder = read_probe_folder(
            args.probe, args.masks, labels, size=image_size, channels=args.channels, object_masks_dir=args.object_masks
        )
    except ProbeFolderError as error:
        raise UsageError(f"--probe {error}") from None
    unmatched = sorted(set(labels) - set(folder.names) - {item.file for item in folder.skipped})
    if unmatched:
        print(
            f"{PROGRAM}: warning: --labels names {len(unmatched)} file(s) not in --probe, e.g. {unmatched[0]}",
            file=sys.stderr,
        )
    return folder


def _recorded_probes(
    args: argparse.Namespace, checkpoints: list[Path], folder: ProbeFolder, normalization: tuple[list[float], ...]
) -> ProbeFolder:
    """``--probes-from-checkpoint``: the probes of ``--probe`` that each checkpoint's audit callback recorded.

    Every checkpoint's own manifest is read and checked against the folder (names, content
    hashes, labels). Several checkpoints must have recorded the same probes: one audit compares
    its checkpoints on one probe set.

    Raises:
        UsageError: For a checkpoint without the callback's state (or several without NAME), a
            recorded probe not in ``--probe``, a content hash or label that differs, or
            checkpoints that recorded different probes.
    """
    from lightning_sas.probes.checkpoint_manifest import ManifestError, read_checkpoint_manifest, select_recorded

    option = "--probes-from-checkpoint"
    chosen: tuple[Path, ProbeFolder] | None = None
    for path in checkpoints:
        try:
            recorded = read_checkpoint_manifest(
                path,
                args.probes_from_checkpoint or None,
                trust=args.trust_checkpoint,
                name_hint=f"give its name, {option} NAME",
                trust_hint="re-run with --trust-checkpoint",
            )
            selected = select_recorded(folder, recorded, *normalization, settings=PREPROCESSING_OPTIONS)
        except ManifestError as error:
            raise UsageError(f"{option}: {error}") from None
        if chosen is not None and selected.names != chosen[1].names:
            raise UsageError(
                f"{option}: {path} recorded other probes than {chosen[0]} ({len(selected.names)} vs "
                f"{len(chosen[1].names)}, first difference: {_first_difference(selected.names, chosen[1].names)}); "
                "one audit compares its checkpoints on one probe set: audit them separately."
            )
        chosen = chosen or (path, selected)
    left_out = len(folder.names) - len(chosen[1].names)
    if left_out:
        print(
            f"{PROGRAM}: note: {option}: auditing the {len(chosen[1].names)} probes the checkpoint recorded; "
            f"{left_out} other file(s) in --probe are left out.",
            file=sys.stderr,
        )
    return chosen[1]


def _first_difference(names: list[str], others: list[str]) -> str:
    """``"a.png / b.png"``: the first position where two probe lists differ, for messages."""
    return next((f"{a} / {b}" for a, b in zip(names, others, strict=False) if a != b), "one list is longer")


def _check_target_labels(args: argparse.Namespace, folder: ProbeFolder) -> None:
    """``--target label`` needs a label for every probe audited."""
    if args.target == "label" and any(label < 0 for label in folder.labels):
        missing = [name for name, label in zip(folder.names, folder.labels, strict=True) if label < 0]
        raise UsageError(f"--target label needs a label for every probe; none for {', '.join(missing[:3])}.")


def alert_rule(args: argparse.Namespace) -> AlertRule:
    """The rule of ``--min-enrichment``, ``--min-flip-rate``, ``--shortcut-threshold``, ``--min-roi-pixels``."""
    return AlertRule(
        min_enrichment=args.min_enrichment,
        min_flip_rate=args.min_flip_rate,
        max_roi_share=args.shortcut_threshold,
        min_roi_pixels=args.min_roi_pixels,
    )


def _read_baseline(path: str) -> dict[str, Any]:
    """``--baseline``: the summary.json of a previous audit.

    Raises:
        UsageError: If it cannot be read or is no audit summary.
    """
    from lightning_sas.report.baseline import load_summary

    try:
        return load_summary(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"--baseline: {error}") from None


def _read_artifacts(
    args: argparse.Namespace, class_names: list[str] | None, image_size: tuple[int, int], folder: ProbeFolder
) -> tuple[ArtifactFolder, int]:
    """``--artifacts`` and ``--artifact-class``: the artifact folder and the class index.

    Raises:
        UsageError: For an unknown class or a bad artifact folder.
    """
    from lightning_sas.probes.artifact_folder import read_artifact_folder
    from lightning_sas.probes.labels import class_index

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
    return artifacts, artifact_class


def read_init_args(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str | None]]:
    """``--config`` and ``--init-args`` read (not yet checked against the model), in the order they apply.

    Raises:
        UsageError: For a config file that is not YAML or has no ``model:`` mapping, or an
            ``--init-args`` that is neither ``key=value`` nor a mapping.
    """
    from lightning_sas.cli.checkpoint import parse_init_args, read_config

    sources: list[tuple[str, dict[str, Any], str | None]] = []
    if getattr(args, "config", None) is not None:  # explain has no --config
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
