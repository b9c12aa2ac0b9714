"""``lightning-sas audit``: load the model, audit the probes, write TensorBoard, summary.json and report.html.

:func:`run_audit_command` runs the steps in order and returns the exit status; each step names
itself (:func:`~lightning_sas.cli.errors.stage`) for an unexpected exception.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.audit_inputs import AuditInputs, check_out, previous_audit_files, read_inputs
from lightning_sas.cli.audit_output import (
    estimate_line,
    incomplete_parts,
    print_summary,
    progress_bar,
    tensorboard_texts,
    write_candidates,
    write_tensorboard,
)
from lightning_sas.cli.errors import EXIT_ERROR, EXIT_OK, EXIT_SHORTCUT, PROGRAM, UsageError, stage
from lightning_sas.cli.methods import build_methods, parse_discovery_config
from lightning_sas.cli.model_import import ModelLoadError
from lightning_sas.cli.model_setup import (
    check_gradcam_layer,
    check_model_output,
    explained_layers,
    import_model,
    load_model,
    resolve_device,
    resolve_output,
)
from lightning_sas.probes.artifact_folder import ArtifactFolder

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.audit.run import AuditResult
    from lightning_sas.audit.verdict import Verdict
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.probes.probe_set import Probes
    from lightning_sas.runtime.outputs import OutputSelector
    from lightning_sas.scores.faithfulness import Faithfulness
    from lightning_sas.trust.intervention import Artifacts

__all__ = ["ARTIFACT_SEED", "SANITY_SEED", "AuditSetup", "run_audit_command"]

#: Seed of the artifact pastes (positions and examples) and of the sanity check's re-initialisation.
ARTIFACT_SEED = 0
SANITY_SEED = 0
#: Seed of shortcut discovery's transplants and clustering.
DISCOVERY_SEED = 0


@dataclass
class AuditSetup:
    """The loaded model and everything prepared to audit it."""

    model_class: type[LightningModule]
    model: LightningModule
    output: OutputSelector
    methods: dict[str, AttributionMethod]
    device: torch.device
    probes: Probes
    #: What a method explained beyond its maps: ``{"gradcam": {"layer": NAME}}``.
    details: dict[str, dict[str, str]]
    artifacts: Artifacts | None
    faithfulness: Faithfulness | None
    #: Model passes per part of the audit, from :func:`lightning_sas.audit.cost.audit_passes`.
    passes: dict[str, tuple[int, bool]]
    discovery: DiscoveryOptions


@dataclass
class AuditReport:
    """The audit's results as they are written: summary, verdict, problems, scalars and pictures."""

    summary: dict[str, Any]
    verdict: Verdict
    issues: list[str]
    scalars: dict[str, float]
    pictures: dict[str, np.ndarray]
    html_pictures: Any
    #: TensorBoard's text tags (manifest, alert, layers, discovery).
    texts: dict[str, str]
    #: Confirmed discovery candidates and the folder (under ``--out``) each is exported to.
    exports: list[tuple[str, Any]]
    #: The normalisation (``mean``, ``std``) to undo when writing pictures.
    display: dict[str, Any]


def run_audit_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas audit``; returns the exit status.

    Returns:
        0 (the alert rule did not fire), 1 (it fired: :func:`lightning_sas.audit.verdict.decide`) or 2
        (the audit is incomplete; the outputs are written all the same).

    Raises:
        UsageError: For any usage or input problem.
        StepFailure: For an unexpected exception, naming the step it happened in.
    """
    with stage("reading the inputs"):
        inputs = read_inputs(args)
    out = Path(args.out)
    setup = _set_up(args, inputs)
    with stage("timing one model pass"):
        line = estimate_line(setup.model, setup.probes.images, setup.passes, setup.output)
    if line:
        print(line, file=sys.stderr, flush=True)
    result = _explain(args, setup)
    with stage("building the report"):
        report = _build_report(args, inputs, setup, result, command)
    with stage(f"writing to --out {args.out}"):
        _write_outputs(args, setup, report)
    print_summary(report.summary, report.issues, out)
    return _exit_status(report.summary, report.verdict, out)


def _set_up(args: argparse.Namespace, inputs: AuditInputs) -> AuditSetup:
    """Import and load the model, build the methods, prepare probes and artifacts, count the passes.

    Raises:
        UsageError: For any usage or input problem found on the way.
    """
    from lightning_sas.cli.checkpoint import merge_init_args

    model_class = import_model(args.model)
    try:
        init_args = merge_init_args(model_class, inputs.init_args)
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    output = resolve_output(args.output)
    methods = build_methods(inputs.method_names, args.sas_iterations, args.gradcam_layer, args.method_config)
    device = resolve_device(args.device)
    model = load_model(model_class, args, device, init_args)
    check_gradcam_layer(model, methods, args.gradcam_layer)
    with stage("preparing the probe images"):
        from lightning_sas.probes.folder import to_probes

        probes = to_probes(inputs.folder, inputs.mean, inputs.std, device)
    num_classes = check_model_output(model, probes.images, output, args.output)
    with stage("finding the layer Grad-CAM explains"):
        details = explained_layers(model, methods, probes.images, output)
    artifacts = _prepare_artifacts(args, inputs, num_classes, device)
    from lightning_sas.audit.cost import audit_passes
    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.scores.faithfulness import Faithfulness

    faithfulness = None if args.no_faithfulness else Faithfulness(steps=args.faithfulness_steps)
    try:
        settings = parse_discovery_config(args.discovery_config)
        discovery = DiscoveryOptions(args.discovery, args.discovery_method, DISCOVERY_SEED, settings)
    except ValueError as error:
        raise UsageError(f"--discovery-config: {error}") from None
    if args.discovery_method is not None and args.discovery_method not in methods:
        raise UsageError(f"--discovery-method {args.discovery_method} is not one of --methods ({', '.join(methods)}).")
    passes = audit_passes(
        methods,
        len(probes),
        faithfulness_steps=None if faithfulness is None else faithfulness.steps,
        intervention_trials=None if artifacts is None else artifacts.trials,
        sanity_stages=args.sanity_stages if args.sanity else 0,
        discovery_passes=discovery.passes(len(probes)) if discovery.applies(probes, artifacts is not None) else 0,
    )
    parts = (probes, details, artifacts, faithfulness, passes, discovery)
    return AuditSetup(model_class, model, output, methods, device, *parts)


def _prepare_artifacts(
    args: argparse.Namespace, inputs: AuditInputs, num_classes: int, device: torch.device
) -> Artifacts | None:
    """The artifacts of ``--artifacts`` on ``device``, checked against the model's classes (``None`` without).

    Raises:
        UsageError: If ``--artifact-class`` is not a class of the model.
    """
    if inputs.artifacts is None or inputs.artifact_class is None:
        return None
    if inputs.artifact_class >= num_classes:
        raise UsageError(
            f"--artifact-class {args.artifact_class}: class index {inputs.artifact_class} is not a class of "
            f"the model, which has {num_classes} classes (0..{num_classes - 1})."
        )
    with stage(f"preparing the artifacts of --artifacts {args.artifacts}"):
        from lightning_sas.trust.intervention import to_artifacts

        return to_artifacts(
            inputs.artifacts,
            inputs.mean,
            inputs.std,
            target_class=inputs.artifact_class,
            trials=args.artifact_trials,
            seed=ARTIFACT_SEED,
            device=device,
        )


def _explain(args: argparse.Namespace, setup: AuditSetup) -> AuditResult:
    """Run the audit itself, with a progress bar counting the model passes."""
    from lightning_sas.audit.run import run_audit
    from lightning_sas.runtime.progress import reporting

    explaining = stage(f"explaining the probes with {', '.join(setup.methods)}")
    with progress_bar(sum(count for count, _ in setup.passes.values())) as bar, reporting(bar.update), explaining:
        return run_audit(
            setup.model,
            setup.probes,
            setup.methods,
            target=args.target,
            progress=lambda name: bar.set_description(name, refresh=False),
            output=setup.output,
            artifacts=setup.artifacts,
            faithfulness=setup.faithfulness,
            sanity_stages=args.sanity_stages if args.sanity else 0,
            sanity_seed=SANITY_SEED,
            discovery=setup.discovery,
        )


def _build_report(
    args: argparse.Namespace, inputs: AuditInputs, setup: AuditSetup, result: AuditResult, command: list[str]
) -> AuditReport:
    """The verdict, summary.json's content (with the baseline comparison), the problems, scalars and pictures."""
    from lightning_sas.audit.run import problems
    from lightning_sas.audit.verdict import decide
    from lightning_sas.loggers.content import audit_scalars, discovery_markdown, render_audit
    from lightning_sas.report import html
    from lightning_sas.report.baseline import compare_with_baseline
    from lightning_sas.report.summary import build_summary

    flagged = [] if result.sanity is None else result.sanity.flagged
    verdict = decide(result.evidence(sanity_flagged=flagged), inputs.rule)
    summary = build_summary(
        result,
        setup.probes,
        skipped=inputs.folder.skipped,
        file_hashes=inputs.folder.file_hashes,
        verdict=verdict,
        rule=inputs.rule,
        class_names=inputs.class_names,
        run=_run_record(args, inputs, setup.model_class, setup.device, command, setup.methods),
        faithfulness=setup.faithfulness,
        artifacts=None if inputs.artifacts is None else _artifacts_record(args, inputs.artifacts),
        sanity=result.sanity,
        method_details=setup.details,
    )
    if inputs.baseline is not None:
        summary["baseline"] = compare_with_baseline(
            summary, inputs.baseline, baseline_path=str(args.baseline), tolerance=args.baseline_tolerance
        )
    issues = problems(result, setup.probes.names)
    scalars = audit_scalars(result)
    display = {"mean": inputs.mean, "std": inputs.std}
    title = f"{setup.model_class.__name__} {Path(args.checkpoint).name}"
    probes = setup.probes
    pictures = (
        render_audit(result, probes, **display, class_names=inputs.class_names, title=title) if result.maps else {}
    )
    html_pictures = html.probe_pictures(result, probes, **display)
    texts = tensorboard_texts(summary, issues)
    found = discovery_markdown(result, inputs.class_names)
    if found is not None:
        texts["audit/discovery"] = found
    candidates = (summary.get("discovery") or {}).get("candidates") or []
    exports = [
        (record["exported"], result.discovery.candidates[number])
        for number, record in enumerate(candidates)
        if record["exported"] and result.discovery is not None
    ]
    return AuditReport(summary, verdict, issues, scalars, pictures, html_pictures, texts, exports, display)


def _write_outputs(args: argparse.Namespace, setup: AuditSetup, audit: AuditReport) -> None:
    """TensorBoard events, summary.json and report.html, written beside ``--out`` and then renamed into place.

    Raises:
        UsageError: If ``--out`` cannot be written, or holds an audit written meanwhile (without ``--overwrite``).
    """
    from lightning_sas.loggers.content import scalar_layout
    from lightning_sas.report import html
    from lightning_sas.report.staging import put_in_place, staging_folder
    from lightning_sas.report.summary import write_summary

    out = Path(args.out)
    staged = None
    try:
        # A new folder beside --out, renamed into place once complete: a failure keeps the previous audit.
        staged = staging_folder(out)
        layout = scalar_layout(
            list(setup.methods),
            roi=bool(setup.probes.roi.any()),
            faithfulness=setup.faithfulness is not None,
            intervention=setup.artifacts is not None,
            discovery=audit.summary.get("discovery") is not None,
        )
        write_tensorboard(staged, audit.pictures, audit.scalars, audit.texts, layout)
        write_candidates(staged, setup.probes, audit.exports, **audit.display)
        write_summary(audit.summary, staged / "summary.json")
        sheets = {tag: picture for tag, picture in audit.pictures.items() if tag.startswith("audit/discovery/")}
        html.write_report(audit.summary, audit.html_pictures, staged / "report.html", sheets)
        check_out(args)  # again: another run may have written an audit there meanwhile
        put_in_place(staged, out, previous_audit_files(out))
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)  # still there only when not put in place


def _exit_status(summary: dict[str, Any], verdict: Verdict, out: Path) -> int:
    """1 when the alert rule fired, 2 for an incomplete audit or a verdict that cannot tell, else 0."""
    incomplete = incomplete_parts(summary)
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
