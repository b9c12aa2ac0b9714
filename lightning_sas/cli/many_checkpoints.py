"""``lightning-sas audit`` over several checkpoints or processes: each checkpoint audited (or found in
the cache), then one combined summary and report.

Each checkpoint's audit is the single-checkpoint audit, written whole into
``<out>/checkpoints/<name>/``; ``<out>`` gets the combined ``summary.json`` (a row per
checkpoint, ordered by training step), ``report.html`` with the trend plots, and TensorBoard
scalars with the training step as their step. Finished audits go to the cache
(:mod:`lightning_sas.nightly.cache`) as soon as each is done, so a job killed half-way resumes
from the checkpoints it finished; with ``--no-cache`` a work folder beside ``--out`` takes the
cache's place for this run and is removed at its end.

Exit status (``--gate``): 1 when the alert rule fired on any checkpoint (``any``) or on the last
by training step (``last``); else 2 when any checkpoint's audit failed or is incomplete; else 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.audit_cache import audit_key, copy_audit, job_cache, keep_in_cache
from lightning_sas.cli.audit_command import audit_checkpoint
from lightning_sas.cli.audit_inputs import AuditInputs, check_out, previous_audit_files
from lightning_sas.cli.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SHORTCUT,
    PROGRAM,
    StepFailure,
    UsageError,
    one_line,
    write_error_log,
)
from lightning_sas.cli.model_setup import PreparedModel, prepare_model, resolve_job_device
from lightning_sas.nightly.cache import AuditCache
from lightning_sas.nightly.checkpoints import CheckpointEntry
from lightning_sas.nightly.processes import Processes, share_work, start_processes

if TYPE_CHECKING:
    from lightning_sas.audit.sharded_run import Ranks

__all__ = ["audit_many", "gate_status", "start_job_processes"]


@dataclass
class Outcome:
    """How one checkpoint's audit ended, and where its files are."""

    status: int
    folder: str | None
    cached: bool = False
    error: str | None = None


def start_job_processes(args: argparse.Namespace, command: list[str]) -> Processes:
    """The job's processes from ``--accelerator``, ``--devices``, ``--num-nodes`` and ``--strategy``.

    Raises:
        UsageError: If Fabric refuses them, or ``--device`` names one device while several are asked for.
    """
    if ":" in args.device and (args.devices != 1 or args.num_nodes > 1 or args.strategy is not None):
        # Checked before any process starts: Fabric, not --device, places several processes.
        raise UsageError(f"--device {args.device} names one device; with several processes give --devices instead.")
    accelerator = args.accelerator or ("auto" if args.device == "auto" else args.device.partition(":")[0])
    try:
        processes = start_processes(
            accelerator, args.devices, args.num_nodes, args.strategy, own_command=sys.argv[1:] == command[1:]
        )
    except ValueError as error:
        raise UsageError(
            f"--accelerator {accelerator} --devices {args.devices} --num-nodes {args.num_nodes} "
            f"--strategy {args.strategy or 'ddp'}: {error}"
        ) from None
    return processes


def gate_status(rows: list[dict[str, Any]], gate: str) -> int:
    """The job's exit status from its rows (ordered by step) and ``--gate`` (see the module's docstring):
    a failed or incomplete audit anywhere is 2 unless the gated rows fired."""
    gated = rows if gate == "any" else rows[-1:]
    if any(row["alert"] for row in gated):
        return EXIT_SHORTCUT
    incomplete = any(row["exit_status"] == EXIT_ERROR or row.get("errors") for row in rows)
    return EXIT_ERROR if incomplete else EXIT_OK


def audit_many(args: argparse.Namespace, inputs: AuditInputs, processes: Processes, command: list[str]) -> int:
    """Audit every checkpoint of ``inputs`` on ``processes``, then write the combined results (rank 0).

    Rank 0 decides (its checkpoints, their keys, what the cache holds) and tells the others, so
    every rank works from one plan; a problem rank 0 meets there, or while writing, reaches every
    rank, so none waits for it.

    Returns:
        The exit status on rank 0; 0 on the other ranks.

    Raises:
        UsageError: On every rank, for a problem rank 0 met while planning or writing.
    """
    prepared = prepare_model(args, inputs, processes.device or resolve_job_device(args))
    cache = job_cache(args)
    plan = _plan(args, inputs, prepared, cache) if processes.is_main else None
    plan = processes.broadcast(plan)
    if isinstance(plan, str):
        raise UsageError(plan)
    entries, keys, done, pending, root = plan
    store = AuditCache(root)
    alone, together = share_work(pending, processes.world_size, processes.rank)
    mine: dict[int, Outcome] = {}
    for index in alone:
        mine[index] = _audit_entry(args, inputs, entries[index], keys[index], prepared, store, command)
    for index in together:
        ranks = processes.ranks(prepared.device)
        outcome = _audit_entry(args, inputs, entries[index], keys[index], prepared, store, command, ranks)
        if processes.is_main:  # the rank that wrote it
            mine[index] = outcome
    outcomes = {index: outcome for part in processes.gather(mine) for index, outcome in part.items()}
    outcomes |= {
        index: Outcome(int(record["exit_status"]), record["folder"], cached=True) for index, record in done.items()
    }
    status: int | str | None = None
    if processes.is_main:
        try:
            status = _write_combined(args, entries, outcomes, prepared, command)
        except UsageError as error:
            status = str(error)
        finally:
            if cache is None:
                shutil.rmtree(root, ignore_errors=True)
    status = processes.broadcast(status)  # every rank waits until rank 0 has written
    if isinstance(status, str):
        raise UsageError(status)
    # Only rank 0 reports: a launcher (torchrun) would read another rank's 1 as a crash and stop rank 0.
    return status if processes.is_main else EXIT_OK


def _plan(
    args: argparse.Namespace, inputs: AuditInputs, prepared: PreparedModel, cache: AuditCache | None
) -> tuple[list[CheckpointEntry], list[str], dict[int, dict[str, Any]], list[int], str] | str:
    """Rank 0's plan: ``(checkpoints, keys, cached records by position, positions to audit, store folder)``,
    or the message of a problem met on the way (every rank raises it).

    Without a cache the store is a new work folder beside ``--out`` (removed at the end): a run
    never finds another run's audits there.
    """
    import tempfile

    try:
        entries = list(inputs.checkpoints)
        keys = [audit_key(args, inputs, entry.path, prepared) for entry in entries]
        found = {index: cache.lookup(key) for index, key in enumerate(keys)} if cache is not None else {}
        if cache is None:
            out = Path(args.out).resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            root = tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent)
        else:
            root = str(cache.root)
    except OSError as error:
        return f"--checkpoint / --cache: cannot read or write ({error.strerror or error}: {error.filename})."
    done = {index: record for index, record in found.items() if record is not None}
    return entries, keys, done, [index for index in range(len(entries)) if index not in done], root


def _audit_entry(
    args: argparse.Namespace,
    inputs: AuditInputs,
    entry: CheckpointEntry,
    key: str,
    prepared: PreparedModel,
    store: AuditCache,
    command: list[str],
    ranks: Ranks | None = None,
) -> Outcome:
    """One checkpoint's audit into a new folder of ``store``, kept there when complete; never raises
    for a problem of this checkpoint (the others are still audited)."""
    writes = ranks is None or ranks.rank == 0
    folder = None
    issues: list[str] = []
    error = None
    try:
        folder = store.new_folder() if writes else None
        report, status = audit_checkpoint(args, inputs, entry.path, prepared, folder, command, ranks)
        issues, verdict = report.issues, report.summary["verdict"]["summary"]
    except UsageError as problem:
        status, error = EXIT_ERROR, " ".join(str(problem).split())
    except OSError as problem:
        status, error = EXIT_ERROR, f"cannot write its audit to {folder} ({problem.strerror or problem})"
    except Exception as problem:  # noqa: BLE001 - a bug or the user's code: this checkpoint fails, the job goes on
        cause, what = (problem.__cause__, problem.what) if isinstance(problem, StepFailure) else (problem, "auditing")
        if folder is not None:
            where = write_error_log(folder, cause, what, command)
        else:  # a rank that writes nothing: its traceback goes to its stderr
            traceback.print_exception(cause, file=sys.stderr)
            where = "traceback above"
        status, error = EXIT_ERROR, f"{what} raised {type(cause).__name__}: {one_line(str(cause))}; {where}"
    if error is not None:
        print(f"{PROGRAM}: error: {entry.path}: {error}", file=sys.stderr)
    elif writes:
        step = "" if entry.step is None else f" (step {entry.step})"
        print(f"{PROGRAM}: {entry.name}{step}: exit {status}: {verdict}", file=sys.stderr)
    if folder is not None and error is None:
        folder = keep_in_cache(store, key, folder, report.summary, issues, status)
    return Outcome(status, None if folder is None else str(folder), error=error)


def _write_combined(
    args: argparse.Namespace,
    entries: list[CheckpointEntry],
    outcomes: dict[int, Outcome],
    prepared: PreparedModel,
    command: list[str],
) -> int:
    """``<out>/checkpoints/<name>/`` per checkpoint and the combined summary, report and TensorBoard scalars."""
    from lightning_sas.report.staging import put_in_place, staging_folder

    out = Path(args.out)
    staged = staging_folder(out)
    try:
        rows = []
        for index, entry in enumerate(entries):
            outcome = outcomes[index]
            target = staged / "checkpoints" / entry.name
            target.mkdir(parents=True)
            if outcome.folder is not None:
                copy_audit(Path(outcome.folder), target)
                if not outcome.cached and Path(outcome.folder).name.startswith(".writing-"):
                    shutil.rmtree(outcome.folder, ignore_errors=True)  # an audit the cache did not keep
            rows.append(_row(entry, outcome, target, staged))
        status = gate_status(rows, args.gate)
        _write_combined_files(staged, rows, args, status, prepared, command)
        check_out(args)
        put_in_place(staged, out, previous_audit_files(out))
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    _print_rows(rows, out, args.gate, status)
    return status


def _row(entry: CheckpointEntry, outcome: Outcome, folder: Path, staged: Path) -> dict[str, Any]:
    """The combined summary's row of one checkpoint."""
    from lightning_sas.report.trends import checkpoint_row

    summary_path = folder / "summary.json"
    where = {
        "checkpoint": str(entry.path),
        "name": entry.name,
        "step": entry.step,
        "epoch": entry.epoch,
        "folder": str(folder.relative_to(staged)),
        "cached": outcome.cached,
        "exit_status": outcome.status,
    }
    if not summary_path.is_file():  # the audit failed before its summary: its error.log says why
        return {**where, "alert": False, "status": "failed", "verdict": None, "methods": {}, "error": outcome.error}
    row = checkpoint_row(json.loads(summary_path.read_text(encoding="utf-8")), **where)
    if outcome.error is not None:
        row["error"] = outcome.error
    return row


def _write_combined_files(
    staged: Path,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    status: int,
    prepared: PreparedModel,
    command: list[str],
) -> None:
    from lightning_sas.report.summary import write_summary
    from lightning_sas.report.trends import combined_summary, write_combined_report

    run = {"command": command, "model": args.model, "device": str(prepared.device), "gate": args.gate}
    combined = combined_summary(rows, gate=args.gate, exit_status=status, run=run)
    write_summary(combined, staged / "summary.json")
    write_combined_report(combined, staged / "report.html")
    _write_trend_scalars(staged, rows)


def _write_trend_scalars(staged: Path, rows: list[dict[str, Any]]) -> None:
    """Each checkpoint's mean scores as TensorBoard scalars at its training step (``trend/<method>/<score>``)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(staged))
    try:
        for position, row in enumerate(rows):
            step = row["step"] if row["step"] is not None else position
            for method, scores in (row.get("methods") or {}).items():
                for score, value in scores.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        writer.add_scalar(f"trend/{method}/{score}", value, global_step=step)
            if row.get("flip_rate") is not None:
                writer.add_scalar("trend/intervention/flip_rate", row["flip_rate"], global_step=step)
            writer.add_scalar("trend/alert", float(row["alert"]), global_step=step)
    finally:
        writer.close()


def _print_rows(rows: list[dict[str, Any]], out: Path, gate: str, status: int) -> None:
    """The combined audit on stdout: a line per checkpoint, then the gate's outcome."""
    for row in rows:
        step = "–" if row["step"] is None else row["step"]
        note = " (cached)" if row["cached"] else ""
        what = row.get("error") or row.get("verdict") or ""
        print(f"  {row['name']:<24} step {step:>8}  exit {row['exit_status']}{note}  {what}")
    fired = sum(bool(row["alert"]) for row in rows)
    print(f"{PROGRAM}: {len(rows)} checkpoint(s), the alert rule fired on {fired}; --gate {gate}: exit {status}")
    print(f"report: {out / 'report.html'}")
