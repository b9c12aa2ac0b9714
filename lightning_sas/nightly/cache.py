"""Finished audits stored by content: a re-run over unchanged inputs costs nothing, a killed job resumes.

An entry is the folder a single-checkpoint audit wrote (``summary.json``, ``report.html``,
TensorBoard events, exported candidates) plus ``entry.json`` (the exit status, the key's parts),
under the SHA-256 of everything that decides the audit's result (:func:`content_key`): the
checkpoint's bytes, the probe, mask, label and artifact files' bytes, the model class's source,
the method settings, every option that changes a number, and the versions of lightning_sas,
torch and Lightning.

Entries are written into a hidden folder inside the cache and renamed into place once complete
(a rename is atomic on one file system), so a reader never sees half an entry: a job killed while
writing leaves only a hidden folder, which the next run ignores (and removes once stale).

The default location is ``$LIGHTNING_SAS_CACHE``, else ``$XDG_CACHE_HOME/lightning_sas/audits``,
else ``~/.cache/lightning_sas/audits``.

Example:
    >>> content_key({"b": [1, 2], "a": "x"}) == content_key({"a": "x", "b": [1, 2]})
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENTRY_FILE", "AuditCache", "content_key", "default_cache_dir", "file_sha256"]

#: Written last into an entry: what makes a folder a finished entry.
ENTRY_FILE = "entry.json"
#: Hidden folders older than this (seconds) are a killed run's leftovers.
STALE_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$LIGHTNING_SAS_CACHE``, else ``$XDG_CACHE_HOME/lightning_sas/audits``, else ``~/.cache/...``."""
    if os.environ.get("LIGHTNING_SAS_CACHE"):
        return Path(os.environ["LIGHTNING_SAS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lightning_sas" / "audits"


def file_sha256(path: os.PathLike[str] | str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 of ``parts`` as canonical JSON (sorted keys): equal parts, equal keys."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditCache:
    """Finished audits by key, in a folder (on a file system every process of the job sees).

    Args:
        root: The cache folder (created when first written).
    """

    def __init__(self, root: os.PathLike[str] | str) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        """Where the entry of ``key`` is (whether or not it exists)."""
        return self.root / key[:2] / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The finished entry's record (``entry.json``, with ``folder``), or ``None`` when there is none."""
        folder = self.entry(key)
        try:
            record = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return {**record, "folder": str(folder)} if isinstance(record, dict) else None

    def new_folder(self) -> Path:
        """An empty hidden folder inside the cache to write an entry into (then :meth:`store` it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        return Path(tempfile.mkdtemp(prefix=".writing-", dir=self.root))

    def store(self, key: str, folder: Path, record: Mapping[str, Any]) -> Path:
        """Make ``folder`` (from :meth:`new_folder`) the entry of ``key``; ``record`` goes to ``entry.json``.

        When another process stored the same key meanwhile, its entry is kept and ``folder``
        removed: both hold the same audit.

        Returns:
            The entry's folder.
        """
        (folder / ENTRY_FILE).write_text(json.dumps({**record, "key": key}, indent=2), encoding="utf-8")
        target = self.entry(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.rename(target)
        except OSError:
            if self.lookup(key) is None:
                shutil.rmtree(target, ignore_errors=True)  # an unfinished entry of an older layout
                folder.rename(target)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return target

    def _remove_stale(self) -> None:
        """Hidden folders of runs killed while writing, older than a day (a live run's are younger)."""
        now = time.time()
        for leftover in self.root.glob(".writing-*"):
            try:
                if now - leftover.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue
