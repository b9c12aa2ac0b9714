"""``lightning-sas export-probes``: write a probe folder from a map-style data set returned by an importable callable.

The folder is written by :func:`lightning_sas.probes.export.export_probes`; this module reads
the options, imports and calls ``--dataset``, and prints how to audit the result.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_sas.cli.errors import ERROR_LOG, EXIT_OK, PROGRAM, UsageError, stage
from lightning_sas.cli.model_import import SPEC_PATTERN, ModelLoadError
from lightning_sas.cli.options import float_list, name_list

__all__ = ["ExportOptions", "run_export_command"]


@dataclass
class ExportOptions:
    """The options of ``export-probes`` read and checked (before the data set is imported)."""

    indices: list[int] | None
    mean: list[float] | None
    std: list[float] | None
    class_names: list[str] | None
    #: ``--image-key``, ``--label-key``, ``--mask-key`` by field, positions as integers.
    keys: dict[str, int | str]


def run_export_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas export-probes``; returns the exit status (0).

    Raises:
        UsageError: For any usage or input problem (also a data set that cannot be exported).
        StepFailure: For an unexpected exception (in the data set's code, or a bug).
    """
    options = _read_export_options(args)
    out = Path(args.out)
    _check_export_out(out)
    dataset = _make_dataset(args.dataset)
    _export(args, options, dataset, out)
    _print_export_result(args, options, out)
    return EXIT_OK


def _read_export_options(args: argparse.Namespace) -> ExportOptions:
    """Check ``--dataset``, ``--count`` / ``--indices`` and ``--seed``; read the other options.

    Raises:
        UsageError: For the first problem found.
    """
    from lightning_sas.validation import check_normalization

    spec = args.dataset
    if not re.fullmatch(SPEC_PATTERN, spec):
        raise UsageError(f"--dataset must be 'package.module:callable', got {spec!r}.")
    if args.count is not None and args.indices is not None:
        raise UsageError("give --count (a seeded, class-balanced selection) or --indices, not both.")
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}.")
    indices = _parse_indices(args.indices)
    try:
        mean, std = check_normalization(float_list(args.mean, "--mean"), float_list(args.std, "--std"), prefix="--")
    except ValueError as error:
        raise UsageError(str(error)) from None
    class_names = name_list(args.class_names)
    keys = {
        name: int(value) if value.isdigit() else value
        for name in ("image", "label", "mask")
        if (value := getattr(args, f"{name}_key")) is not None
    }
    return ExportOptions(indices, mean, std, class_names, keys)


def _check_export_out(out: Path) -> None:
    """``--out`` of export-probes: a folder (or none yet); a previous run's error.log is removed.

    Whether the folder may take the export (new, empty, or a previous export) is
    :func:`~lightning_sas.probes.export.export_probes`'s decision.
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


def _make_dataset(spec: str) -> Any:
    """Import ``--dataset`` and call it.

    Raises:
        UsageError: If it cannot be imported or is not callable.
        StepFailure: If importing or calling it raises anything else.
    """
    from lightning_sas.cli.checkpoint import import_object

    with stage(f"importing --dataset {spec}"):
        try:
            factory = import_object(spec)
        except ModelLoadError as error:
            raise UsageError(f"--dataset {error}") from None
    if not callable(factory):
        raise UsageError(f"--dataset {spec} is a {type(factory).__name__}, not a callable returning a Dataset.")
    with stage(f"calling --dataset {spec}"):
        return factory()


def _export(args: argparse.Namespace, options: ExportOptions, dataset: Any, out: Path) -> None:
    """Write the probe folder; the export's expected errors as one-line usage errors.

    Raises:
        UsageError: For a folder that cannot take the export, an item key that does not fit, a
            data set that cannot be exported, or a folder that cannot be written.
    """
    spec = args.dataset
    with stage(f"exporting the data set of --dataset {spec} to --out {args.out}"):
        from lightning_sas.probes.export import ItemKeyError, export_probes
        from lightning_sas.probes.export_folder import ExportError, ExportFolderError

        try:
            export_probes(
                dataset,
                out,
                count=args.count,
                indices=options.indices,
                seed=args.seed,
                mean=options.mean,
                std=options.std,
                class_names=options.class_names,
                item_keys=options.keys or None,
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


def _print_export_result(args: argparse.Namespace, options: ExportOptions, out: Path) -> None:
    """What was exported (from manifest.json), a warning for clipped images, and the audit command to run."""
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
    audit_options = f"--probe {out} --labels {out / 'labels.csv'}" + (f" --masks {out / 'masks'}" if masked else "")
    if options.mean is not None:
        audit_options += f" --mean {' '.join(f'{value:g}' for value in options.mean)}"
    if options.std is not None:
        audit_options += f" --std {' '.join(f'{value:g}' for value in options.std)}"
    if options.class_names is not None:
        audit_options += f" --class-names {','.join(options.class_names)}"
    print(f"{PROGRAM}: exported {len(entries)} probe(s) ({masked} with a mask) to {out}")
    if not masked and args.mask_key is None:
        print(
            'note: no item had an ROI mask under "mask" or "roi"; for tuple items give its position, e.g. --mask-key 2'
        )
    print(f"audit them with: {PROGRAM} audit {audit_options} --checkpoint ... --model ... --out ...")
