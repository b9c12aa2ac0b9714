"""Where a command-line audit is written: a staging folder beside ``--out``, swapped into place once complete.

A failure while writing leaves the previous audit as it was: the files go to a hidden folder
beside ``out`` (:func:`staging_folder`), which :func:`put_in_place` then renames into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["put_in_place", "staging_folder"]


def staging_folder(out: os.PathLike[str] | str) -> Path:
    """A new, empty, hidden folder beside ``out`` to write an audit into before :func:`put_in_place`.

    Beside ``out`` (not in the system's temporary folder) so that it is on the same file system
    and can be renamed into place; beside the folder a symbolic link ``out`` points to.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def put_in_place(staged: Path, out: Path, previous: Sequence[Path]) -> None:
    """Make the files written in ``staged`` the audit in ``out``, replacing the ``previous`` audit's files.

    When ``out`` holds nothing but ``previous`` (or does not exist), the folders are swapped by
    two renames: the previous audit stays whole until the moment it is replaced. When ``out``
    holds other things too (they stay), or cannot be renamed (a mount point), each file is moved
    in with ``os.replace`` (atomic per file) and the previous files the new audit lacks are removed.

    A symbolic link ``out`` stays: the folder it points to is replaced.

    Raises:
        OSError: If a rename or removal fails (``out`` is restored when the swap fails half-way).
    """
    out = out.resolve()
    previous = [out / path.name for path in previous]
    if not out.exists():
        staged.rename(out)
        return
    kept = set(previous)
    if all(path in kept for path in out.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        try:
            out.rename(trash / out.name)
        except OSError:
            trash.rmdir()  # ``out`` cannot move: replace its files one by one below
        else:
            try:
                staged.rename(out)
            except OSError:
                (trash / out.name).rename(out)  # back in place: the previous audit stays
                trash.rmdir()
                raise
            shutil.rmtree(trash, ignore_errors=True)
            return
    for path in previous:
        if path.is_dir():
            shutil.rmtree(path)  # an audit's folder (candidates, checkpoints): replaced whole, never merged
        elif not (staged / path.name).exists():
            path.unlink(missing_ok=True)
    for path in staged.iterdir():
        os.replace(path, out / path.name)
    staged.rmdir()
