"""The ``lightning-sas`` command line: ``lightning-sas audit`` audits a saved checkpoint.

The same audit as the training callback, on a checkpoint and a folder of probe images, for
nightly jobs: TensorBoard event files with the callback's tags, ``report.html`` for people,
``summary.json`` for machines, and an exit status a scheduler can act on:

* 0: every criterion the inputs allow was checked and none was crossed (or there was nothing
  to check: no probe has a mask and no artifact was given);
* 1: the alert rule fired: :func:`lightning_sas.audit.verdict.decide`, the rule the training
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
  the artifact's class, a model whose output does not depend on its input; a discovered region
  that moves predictions but sits mostly on probes labelled as its class, which the probes cannot
  tell from the object); ``summary.json`` and ``report.html`` are still written and say why.

Every error is one line on stderr, ``lightning-sas: error: ...``. For an unexpected exception
that line names the exception and where it happened, and the full traceback is written to
``<out>/error.log``. Before the audit starts, one more stderr line estimates its time (one
model pass timed on the probes, times the passes of :func:`lightning_sas.audit.cost.audit_passes`);
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
an importable callable (:func:`lightning_sas.probes.export.export_probes`), with the same error
conventions (exit 2, one line).

``lightning-sas explain IMAGE [IMAGE ...]`` explains single images with any classifier (a torchvision
or timm architecture with ``--weights``, a TorchScript or ``torch.export`` file, or a Lightning
checkpoint): per image and method a grey PNG and a colour overlay at the image's size and the raw
map as ``.npy`` (:mod:`~lightning_sas.cli.explain_command`); exit 2 for an error or a failed method.

Reading the probe and artifact folders lives in :mod:`lightning_sas.probes.folder` and
importing the model and loading the checkpoint in :mod:`lightning_sas.cli.checkpoint`. The
command line itself is split by concept: :mod:`~lightning_sas.cli.parser` (the options,
help texts in :mod:`~lightning_sas.cli.help_texts`), :mod:`~lightning_sas.cli.audit_command`
and :mod:`~lightning_sas.cli.export_command` (the two commands), :mod:`~lightning_sas.cli.errors`
(exit statuses, one-line errors, the error log); this module is the entry point. Heavy
libraries (torch, Lightning, OpenCV) are imported only when a command needs them, so
``--help`` and most usage errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_sas.cli.audit_command import ARTIFACT_SEED, SANITY_SEED, run_audit_command
from lightning_sas.cli.audit_inputs import AUDIT_FILES, EVENTS_PREFIX, AuditInputs, previous_audit_files, read_inputs
from lightning_sas.cli.audit_output import PROGRESS_DELAY, estimate_line, write_tensorboard
from lightning_sas.cli.errors import (
    ERROR_LOG,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SHORTCUT,
    EXIT_USAGE,
    PROGRAM,
    StepFailure,
    UsageError,
    one_line,
    write_error_log,
)
from lightning_sas.cli.explain_command import run_explain_command
from lightning_sas.cli.export_command import run_export_command
from lightning_sas.cli.job_file import job_options
from lightning_sas.cli.methods import build_methods, parse_method_config
from lightning_sas.cli.model_setup import (
    check_gradcam_layer,
    check_model_output,
    explained_layers,
    resolve_device,
    resolve_output,
)
from lightning_sas.cli.options import parse_image_size
from lightning_sas.cli.parser import build_parser

__all__ = [
    "ARTIFACT_SEED",
    "AUDIT_FILES",
    "ERROR_LOG",
    "EVENTS_PREFIX",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_SHORTCUT",
    "EXIT_USAGE",
    "PROGRAM",
    "PROGRESS_DELAY",
    "SANITY_SEED",
    "AuditInputs",
    "StepFailure",
    "UsageError",
    "build_methods",
    "build_parser",
    "check_gradcam_layer",
    "check_model_output",
    "estimate_line",
    "explained_layers",
    "main",
    "parse_image_size",
    "parse_method_config",
    "previous_audit_files",
    "read_inputs",
    "resolve_device",
    "resolve_output",
    "run_audit_command",
    "run_export_command",
    "write_error_log",
    "write_tensorboard",
]


def _report_unexpected(error: Exception, args: argparse.Namespace, command: Sequence[str]) -> None:
    """One line on stderr for an unexpected exception; its traceback to ``<out>/error.log``."""
    if isinstance(error, StepFailure) and error.__cause__ is not None:
        cause, what, hint = error.__cause__, error.what, error.hint
    else:
        cause, what, hint = error, "running the audit", ""
    where = write_error_log(Path(args.out), cause, what, command)
    detail = one_line(str(cause)) or "no message"
    hint_text = f" ({hint})" if hint else ""
    print(
        f"{PROGRAM}: error: {what} raised {type(cause).__name__}: {detail}{hint_text}; {where}.",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 the alert rule fired, 2 error).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(job_options(arguments))
    except UsageError as error:
        print(f"{PROGRAM}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_request:  # --help (0) and argparse's usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    command = [PROGRAM, *arguments]
    run = {"export-probes": run_export_command, "explain": run_explain_command}.get(args.command, run_audit_command)
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
