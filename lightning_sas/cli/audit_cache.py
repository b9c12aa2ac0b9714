"""The audit's side of the result cache (:mod:`lightning_sas.nightly.cache`): what keys an audit, and
copying finished audits in and out.

:func:`audit_key` hashes everything that decides an audit's numbers: the checkpoint's bytes (and
its path, which the report names), every probe, mask, object-mask, label, artifact and baseline
file's bytes (and which files were skipped), the source files of the model class and of an
``--output`` function, the constructor arguments, the method settings (their ``repr``, defaults
included), the device type, every other option of the command line (new options count by
default), lightning_sas's own source files and the versions of torch and Lightning. Options
that only say where to write or how to split the work (``--out``, ``--overwrite``, ``--cache``,
``--devices``, ``--gate``, ...) do not count: the audit is the same.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.errors import PROGRAM
from lightning_sas.nightly.cache import ENTRY_FILE, AuditCache, content_key, default_cache_dir, file_sha256

if TYPE_CHECKING:
    from lightning_sas.cli.audit_inputs import AuditInputs
    from lightning_sas.cli.model_setup import PreparedModel

__all__ = [
    "CACHEABLE",
    "audit_key",
    "cacheable",
    "cached_outcome",
    "copy_audit",
    "job_cache",
    "keep_in_cache",
]

#: Exit statuses whose audits may be kept (when complete: :func:`cacheable`).
CACHEABLE = (0, 1)
#: Options that do not change an audit's result (where it goes, how the work is split), or that
#: count through their content (files) or their resolved value (the device type, the constructor arguments).
_NOT_KEYED = {
    "command", "out", "overwrite", "cache", "no_cache", "gate", "accelerator", "devices", "num_nodes",
    "strategy", "device", "checkpoint", "probe", "masks", "object_masks", "labels", "artifacts", "baseline",
    "config", "init_args",
}  # fmt: skip


def cacheable(summary: dict[str, Any], status: int) -> bool:
    """Whether an audit is kept: exit 0 or 1 and complete. One with a failed part (a method, the
    faithfulness scores, discovery) may have failed for a passing reason (memory, a full disk) and
    is run again next time, even when the rule fired."""
    from lightning_sas.cli.audit_output import incomplete_parts

    return status in CACHEABLE and not incomplete_parts(summary)


def job_cache(args: argparse.Namespace) -> AuditCache | None:
    """``--cache`` (or the default folder), ``None`` under ``--no-cache``."""
    if args.no_cache:
        return None
    return AuditCache(args.cache if args.cache else default_cache_dir())


def _folder_hashes(folder: str | None) -> dict[str, str] | None:
    if folder is None:
        return None
    root = Path(folder)
    return {str(path.relative_to(root)): file_sha256(path) for path in sorted(root.rglob("*")) if path.is_file()}


def _file_hash(path: str | None) -> str | None:
    return None if path is None else file_sha256(path)


def _source_hash(code: object) -> str | None:
    """The hash of the file that defines ``code`` (the model class, an ``--output`` function): edited
    code is a new audit."""
    try:
        source = inspect.getsourcefile(code)  # type: ignore[arg-type]
    except TypeError:
        return None
    return file_sha256(source) if source is not None and Path(source).is_file() else None


@functools.cache
def _package_hash() -> str:
    """The hash of lightning_sas's own source files: an edited install (not only a new version) is a new audit."""
    root = Path(__file__).resolve().parents[1]
    return content_key({str(path.relative_to(root)): file_sha256(path) for path in sorted(root.rglob("*.py"))})


def audit_key(args: argparse.Namespace, inputs: AuditInputs, checkpoint: Path, prepared: PreparedModel) -> str:
    """The cache key of auditing ``checkpoint`` with these inputs and options (see the module's docstring)."""
    import lightning
    import torch

    import lightning_sas

    parts: dict[str, Any] = {
        "versions": [lightning_sas.__version__, _package_hash(), torch.__version__, lightning.__version__],
        "checkpoint": file_sha256(checkpoint),
        # The path too: the audit's report and summary name it, so a copy elsewhere is audited anew.
        "checkpoint_path": str(checkpoint.resolve()),
        "model_source": _source_hash(prepared.model_class),
        "output_source": _source_hash(prepared.output) if callable(prepared.output) else None,
        "init_args": prepared.init_args,
        "methods": {name: repr(method) for name, method in prepared.methods.items()},
        "device": prepared.device.type,
        "probes": list(zip(inputs.folder.names, inputs.folder.file_hashes, strict=True)),
        "skipped": [(item.file, item.reason) for item in inputs.folder.skipped],
        "masks": _folder_hashes(args.masks),
        "object_masks": _folder_hashes(args.object_masks),
        "artifacts": _folder_hashes(args.artifacts),
        "labels": _file_hash(args.labels),
        "baseline": _file_hash(args.baseline),
        "options": {name: value for name, value in sorted(vars(args).items()) if name not in _NOT_KEYED},
    }
    return content_key(parts)


def copy_audit(source: Path, target: Path) -> None:
    """An audit folder's files (not the cache's ``entry.json``) copied into ``target``."""
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ENTRY_FILE))


def keep_in_cache(
    cache: AuditCache | None,
    key: str,
    folder: Path,
    summary: dict[str, Any],
    issues: Sequence[str],
    status: int,
    *,
    copy: bool = False,
) -> Path:
    """Keep a complete audit (:func:`cacheable`) under ``key``: moved into the cache, or a copy of it
    with ``copy`` (``folder`` stays). A cache that cannot be written only warns: the audit stands.

    Returns:
        Where the audit is now (the cache's entry when it moved there, else ``folder``).
    """
    if cache is None or not cacheable(summary, status):
        return folder
    try:
        if not copy:
            return cache.store(key, folder, cache_record(status, issues))
        entry = cache.new_folder()
        copy_audit(folder, entry)
        cache.store(key, entry, cache_record(status, issues))
    except OSError as problem:
        reason = problem.strerror or problem
        print(f"{PROGRAM}: warning: {summary['checkpoint']}: not cached ({reason})", file=sys.stderr)
    return folder


def cache_record(status: int, issues: Sequence[str]) -> dict[str, Any]:
    """What ``entry.json`` holds besides the key: the exit status and the problems printed with it."""
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"exit_status": status, "issues": list(issues), "stored": created}


def cached_outcome(record: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str], int]:
    """``(summary, problems, exit status)`` of a cached audit copied into ``folder``."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return summary, list(record.get("issues", [])), int(record["exit_status"])
