"""``lightning-sas audit``: load the model, audit the probes, write TensorBoard, summary.json and report.html.

:func:`run_audit_command` runs the steps in order and returns the exit status; each step names
itself (:func:`~lightning_sas.cli.errors.stage`) for an unexpected exception.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.audit_cache import audit_key, cached_outcome, copy_audit, job_cache, keep_in_cache
from lightning_sas.cli.audit_inputs import AuditInputs, check_out, previous_audit_files, read_inputs
from lightning_sas.cli.audit_output import (
    estimate_line,
    exit_status,
    print_exit_reason,
    print_summary,
    progress_bar,
    tensorboard_texts,
    write_candidates,
    write_tensorboard,
)
from lightning_sas.cli.errors import PROGRAM, UsageError, stage
from lightning_sas.cli.model_setup import (
    PreparedModel,
    check_gradcam_layer,
    check_model_output,
    explained_layers,
    load_model,
    prepare_model,
    resolve_job_device,
)
from lightning_sas.cli.run_record import run_record
from lightning_sas.probes.artifact_folder import ArtifactFolder

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.audit.discovery import DiscoveryOptions
    from lightning_sas.audit.run import AuditResult
    from lightning_sas.audit.sharded_run import Ranks
    from lightning_sas.audit.verdict import Verdict
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.probes.probe_set import Probes
    from lightning_sas.runtime.outputs import OutputSelector
    from lightning_sas.scores.faithfulness import Faithfulness
    from lightning_sas.trust.intervention import Artifacts

__all__ = ["ARTIFACT_SEED", "SANITY_SEED", "AuditReport", "AuditSetup", "audit_checkpoint", "run_audit_command"]

#: Seed of the artifact pastes (positions and examples) and of the sanity check's re-initialisation.
ARTIFACT_SEED = 0
SANITY_SEED = 0


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

    One checkpoint on one process is audited into ``--out`` itself; several checkpoints, or
    several processes, go through :func:`~lightning_sas.cli.many_checkpoints.audit_many`.

    Returns:
        0 (the alert rule did not fire), 1 (it fired: :func:`lightning_sas.audit.verdict.decide`) or 2
        (the audit is incomplete; the outputs are written all the same).

    Raises:
        UsageError: For any usage or input problem.
        StepFailure: For an unexpected exception, naming the step it happened in.
    """
    with stage("reading the inputs"):
        inputs = read_inputs(args)
    from lightning_sas.cli.many_checkpoints import audit_many, start_job_processes

    processes = start_job_processes(args, command)
    if len(inputs.checkpoints) == 1 and processes.world_size == 1:
        return _audit_one_checkpoint(args, inputs, command)
    try:
        return audit_many(args, inputs, processes, command)
    finally:
        processes.close()


def _audit_one_checkpoint(args: argparse.Namespace, inputs: AuditInputs, command: list[str]) -> int:
    """One checkpoint, one process: the audit (or its cached copy) written beside ``--out``, then put in place."""
    from lightning_sas.report.staging import put_in_place, staging_folder

    out, checkpoint = Path(args.out), inputs.checkpoints[0].path
    prepared = prepare_model(args, inputs, resolve_job_device(args))
    cache = job_cache(args)
    key = audit_key(args, inputs, checkpoint, prepared)
    cached = cache.lookup(key) if cache is not None else None
    staged = None
    try:
        staged = staging_folder(out)
        if cached is not None:
            copy_audit(Path(cached["folder"]), staged)
            summary, issues, status = cached_outcome(cached, staged)
            print(f"{PROGRAM}: {checkpoint}: unchanged since the audit of {summary['created']}, reused from "
                  f"the cache {cache.root} (--no-cache audits again)", file=sys.stderr)  # fmt: skip
        else:
            report, status = audit_checkpoint(args, inputs, checkpoint, prepared, staged, command)
            summary, issues = report.summary, report.issues
            keep_in_cache(cache, key, staged, summary, issues, status, copy=True)
        with stage(f"writing to --out {args.out}"):
            check_out(args)  # again: another run may have written an audit there meanwhile
            put_in_place(staged, out, previous_audit_files(out))
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)  # still there only when not put in place
    print_summary(summary, issues, out)
    print_exit_reason(summary, out)
    return status


def audit_checkpoint(
    args: argparse.Namespace,
    inputs: AuditInputs,
    checkpoint: Path,
    prepared: PreparedModel,
    folder: Path | None,
    command: list[str],
    ranks: Ranks | None = None,
) -> tuple[AuditReport, int]:
    """Audit one checkpoint and write its outputs into ``folder`` (``None``: write nothing, another rank does).

    Args:
        args: The command line.
        inputs: What :func:`~lightning_sas.cli.audit_inputs.read_inputs` read.
        checkpoint: The checkpoint file.
        prepared: The model class, constructor arguments, output selector, methods and device.
        folder: A new folder to write the audit into.
        command: The command line as given (recorded).
        ranks: Several processes explaining a share of the probes each; ``None``: this one alone.

    Returns:
        The report and the exit status.
    """
    from lightning_sas.runtime.distributed import all_ranks_together, failing_together

    # With several ranks, every step they take together fails on all of them or on none: none waits.
    with all_ranks_together() if ranks is not None else nullcontext():
        with failing_together(prepared.device, f"loading {checkpoint}"):
            setup = _set_up(args, inputs, checkpoint, prepared)
        if ranks is None or ranks.rank == 0:
            with stage("timing one model pass"):
                line = estimate_line(setup.model, setup.probes.images, setup.passes, setup.output)
            if line:
                print(line, file=sys.stderr, flush=True)
        result = _explain(args, setup, ranks)
    with stage("building the report"):
        report = _build_report(args, inputs, setup, result, command, checkpoint)
    if folder is not None:  # an OSError here is the output's: the caller names where it writes
        _write_outputs(folder, setup, report)
    return report, exit_status(report.summary)


def _set_up(args: argparse.Namespace, inputs: AuditInputs, checkpoint: Path, prepared: PreparedModel) -> AuditSetup:
    """Load the checkpoint, prepare probes and artifacts, count the passes.

    Raises:
        UsageError: For any usage or input problem found on the way.
    """
    model_class, methods, device, output = prepared.model_class, prepared.methods, prepared.device, prepared.output
    model = load_model(model_class, args, device, prepared.init_args, checkpoint)
    check_gradcam_layer(model, methods, args.gradcam_layer)
    with stage("preparing the probe images"):
        from lightning_sas.probes.folder import to_probes

        probes = to_probes(inputs.folder, inputs.mean, inputs.std, device)
    num_classes = check_model_output(model, probes.images, output, args.output)
    with stage("finding the layer Grad-CAM explains"):
        details = explained_layers(model, methods, probes.images, output)
    artifacts = _prepare_artifacts(args, inputs, num_classes, device)
    from lightning_sas.audit.cost import audit_passes
    from lightning_sas.scores.faithfulness import Faithfulness

    faithfulness = None if args.no_faithfulness else Faithfulness(steps=args.faithfulness_steps)
    discovery = prepared.discovery
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


def _explain(args: argparse.Namespace, setup: AuditSetup, ranks: Ranks | None) -> AuditResult:
    """Run the audit itself, with a progress bar counting the model passes (sharded over ``ranks``)."""
    from lightning_sas.audit.run import run_audit
    from lightning_sas.runtime.progress import reporting

    options = {
        "target": args.target,
        "output": setup.output,
        "artifacts": setup.artifacts,
        "faithfulness": setup.faithfulness,
        "sanity_stages": args.sanity_stages if args.sanity else 0,
        "sanity_seed": SANITY_SEED,
    }
    explaining = stage(f"explaining the probes with {', '.join(setup.methods)}")
    if ranks is not None:
        from lightning_sas.audit.sharded_run import explain_on_every_rank

        with explaining:
            return explain_on_every_rank(
                setup.model, setup.probes, setup.methods, ranks, discovery=setup.discovery, **options
            )
    with progress_bar(sum(count for count, _ in setup.passes.values())) as bar, reporting(bar.update), explaining:
        progress = lambda name: bar.set_description(name, refresh=False)
        return run_audit(
            setup.model, setup.probes, setup.methods, discovery=setup.discovery, progress=progress, **options
        )


def _build_report(
    args: argparse.Namespace,
    inputs: AuditInputs,
    setup: AuditSetup,
    result: AuditResult,
    command: list[str],
    checkpoint: Path,
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
        run=run_record(args, inputs, setup.model_class, setup.device, setup.methods, command, checkpoint),
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
    title = f"{setup.model_class.__name__} {checkpoint.name}"
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


def _write_outputs(folder: Path, setup: AuditSetup, audit: AuditReport) -> None:
    """TensorBoard events, summary.json, report.html and exported candidates, written into ``folder``."""
    from lightning_sas.loggers.content import scalar_layout
    from lightning_sas.report import html
    from lightning_sas.report.summary import write_summary

    layout = scalar_layout(
        list(setup.methods),
        roi=bool(setup.probes.roi.any()),
        faithfulness=setup.faithfulness is not None,
        intervention=setup.artifacts is not None,
        discovery=audit.summary.get("discovery") is not None,
    )
    write_tensorboard(folder, audit.pictures, audit.scalars, audit.texts, layout)
    write_candidates(folder, setup.probes, audit.exports, **audit.display)
    write_summary(audit.summary, folder / "summary.json")
    sheets = {tag: picture for tag, picture in audit.pictures.items() if tag.startswith("audit/discovery/")}
    html.write_report(audit.summary, audit.html_pictures, folder / "report.html", sheets)


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
