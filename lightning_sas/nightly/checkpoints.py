"""The checkpoints of a nightly audit: ``--checkpoint`` files, folders and globs, named and ordered by step.

Example:
    >>> unique_names([Path("runs/a/last.ckpt"), Path("runs/b/last.ckpt"), Path("runs/a/epoch=1.ckpt")])
    ['a__last', 'b__last', 'epoch=1']
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKPOINT_SUFFIXES", "CheckpointEntry", "expand_checkpoints", "training_position", "unique_names"]

#: File endings a ``--checkpoint`` folder is searched for.
CHECKPOINT_SUFFIXES = (".ckpt",)


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint to audit.

    Attributes:
        path: The file.
        name: A short name, unique in the run: the folder its audit is written to.
        step: The training step it was saved at (``global_step``), ``None`` when it holds none.
        epoch: The epoch it was saved in, ``None`` when it holds none.
    """

    path: Path
    name: str
    step: int | None
    epoch: int | None


def _matches(value: str) -> list[Path]:
    """The checkpoint files ``value`` names: itself, the ``.ckpt`` files under a folder, or a glob's files.

    Raises:
        ValueError: If it names no file, or a folder without checkpoints.
    """
    path = Path(value)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(item for item in path.rglob("*") if item.is_file() and item.suffix in CHECKPOINT_SUFFIXES)
        if not found:
            raise ValueError(f"{value}: a folder without checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}).")
        return found
    if glob.has_magic(value):
        found = sorted(Path(item) for item in glob.glob(value, recursive=True) if Path(item).is_file())
        if not found:
            raise ValueError(f"{value}: the pattern matches no file.")
        return found
    raise ValueError(f"{value}: no such file or folder.")


def expand_checkpoints(values: Sequence[str]) -> list[Path]:
    """Every checkpoint file ``values`` name, each once, in the order given (a folder's or glob's sorted).

    Raises:
        ValueError: For a value that names nothing (the message starts with it).
    """
    files: list[Path] = []
    seen: set[Path] = set()
    for value in values:
        for path in _matches(value):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                files.append(path)
    return files


def unique_names(paths: Sequence[Path]) -> list[str]:
    """A short, unique name per checkpoint: its stem, prefixed with as many parent folders as tell
    it apart from the checkpoints of the same stem (joined with ``__``)."""
    resolved = [path.resolve() for path in paths]
    depths = [0] * len(resolved)

    def name(index: int) -> str:
        path = resolved[index]
        parents = path.parent.parts[len(path.parent.parts) - depths[index] :] if depths[index] else ()
        return "__".join((*parents, path.stem))

    while True:
        names = [name(index) for index in range(len(resolved))]
        clashing = [index for index, text in enumerate(names) if names.count(text) > 1]
        if not clashing:
            return names
        for index in clashing:
            if depths[index] >= len(resolved[index].parent.parts):  # the same path twice: numbered
                return [f"{number:03d}_{text}" for number, text in enumerate(names)]
            depths[index] += 1


def training_position(path: Path) -> tuple[int | None, int | None]:
    """``(global_step, epoch)`` saved in a Lightning checkpoint; ``None`` for what it does not hold or
    cannot be read without unpickling code (the audit itself then says why)."""
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: its position is unknown, the audit reports why
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            return None, None
    if not isinstance(content, dict):
        return None, None
    step, epoch = content.get("global_step"), content.get("epoch")
    return (step if isinstance(step, int) else None), (epoch if isinstance(epoch, int) else None)


def checkpoint_entries(paths: Sequence[Path]) -> list[CheckpointEntry]:
    """The checkpoints, named and ordered by step (those without one last, in the order given)."""
    names = unique_names(paths)
    entries = [CheckpointEntry(path, name, *training_position(path)) for path, name in zip(paths, names, strict=True)]
    order = sorted(
        range(len(entries)), key=lambda index: (entries[index].step is None, entries[index].step or 0, index)
    )
    return [entries[index] for index in order]
