"""Recognise a PyTorch checkpoint by its first bytes, and say what a file is when it is none.

:func:`check_checkpoint_file` needs no torch: a folder, an empty file, an image, a text file, a
Git LFS pointer, a zip archive cut short, a plain pickle, ... are named as such (torch's own
errors for those are ``IndexError: pop from empty list``, ``EOFError`` or advice to unpickle
arbitrary code).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from lightning_sas.cli.model_import import ModelLoadError

__all__ = ["check_checkpoint_file"]

#: What ``torch.save`` wrote before PyTorch 1.6 (``_use_new_zipfile_serialization=False``):
#: a pickle protocol 2 header followed by torch's magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
#: File signatures of things people pass by mistake, as (prefix, description).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras model)"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
)
#: Suffixes of checkpoint files, suggested when a folder is given.
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def _checkpoints_in(folder: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` checkpoint-like files under ``folder`` (relative paths), newest first."""
    found: list[Path] = []
    try:
        for path in folder.rglob("*"):
            if path.suffix.lower() in _CHECKPOINT_SUFFIXES and path.is_file():
                found.append(path)
            if len(found) >= 50:  # a huge tree: enough to suggest a few
                break
    except OSError:
        return []
    found.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return [str(path) for path in found[:limit]]


def _text_preview(head: bytes) -> str | None:
    """The first line of ``head`` if it reads as text, else ``None``."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The first bytes may end inside a multi-byte character.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not text or any(ord(char) < 32 and char not in "\t\r\n" for char in text):
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:60] + ("..." if len(first) > 60 else "")


def is_safetensors(head: bytes) -> bool:
    """Whether a file's first bytes are a safetensors file's: an 8-byte little-endian header length, then JSON."""
    return len(head) > 9 and head[8:10] in (b'{"', b"{ ")


def check_checkpoint_file(path: os.PathLike[str] | str) -> None:
    """Check that ``path`` can be a PyTorch checkpoint, by its first bytes (no torch needed).

    Accepts a zip archive with a ``data.pkl`` inside (what ``torch.save`` writes) and the legacy
    format (before PyTorch 1.6). Everything else is refused with what it is instead.

    Raises:
        ModelLoadError: For a missing path, a folder (naming checkpoint files inside it), an
            unreadable or empty file, a zip archive cut short or without ``data.pkl``, an
            image, a text file (a Git LFS pointer is named as such), a safetensors file, a
            plain pickle, or unknown bytes. The message starts with the path.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".ckpt") as file:
        ...     try:
        ...         check_checkpoint_file(file.name)
        ...     except ModelLoadError as error:
        ...         print(str(error).split(" is ")[1][:13])
        an empty file
    """
    path = Path(path)
    head = _read_head(path)
    if head.startswith(b"PK\x03\x04"):
        _check_zip_archive(path)
        return
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return
    raise ModelLoadError(_what_it_is_instead(path, head))


def _read_head(path: Path) -> bytes:
    """The first 512 bytes of the file ``path``.

    Raises:
        ModelLoadError: For a folder (naming checkpoint files inside it), a missing path, no
            regular file, an unreadable or an empty file.
    """
    if path.is_dir():
        inside = _checkpoints_in(path)
        hint = f"; it holds {', '.join(inside)}: give one of those files" if inside else " (it holds no .ckpt file)"
        raise ModelLoadError(f"{path} is a folder, not a checkpoint file{hint}.")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file.")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file.")
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError as error:
        raise ModelLoadError(f"{path} cannot be read ({error.strerror or error}).") from None
    if not head:
        raise ModelLoadError(
            f"{path} is an empty file (0 bytes), not a checkpoint; was it written completely (disk full, "
            "job killed while saving)?"
        )
    return head


def _check_zip_archive(path: Path) -> None:
    """Check that the zip archive ``path`` is complete and holds a ``data.pkl`` (what ``torch.save`` writes).

    Raises:
        ModelLoadError: For an archive cut short or without ``data.pkl``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise ModelLoadError(
            f"{path} is a damaged zip archive, the format torch.save writes, but its end is missing: "
            f"the file was cut short ({path.stat().st_size} bytes) while saving or copying."
        ) from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise ModelLoadError(
            f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside; it holds "
            f"{', '.join(names[:3]) or 'nothing'})."
        )


def _what_it_is_instead(path: Path, head: bytes) -> str:
    """The message for a file that is no checkpoint: what its first bytes ``head`` say it is."""
    for signature, description in _SIGNATURES:
        if head.startswith(signature):
            return f"{path} is {description}, not a PyTorch checkpoint."
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return (
            f"{path} is a Python pickle but not a PyTorch checkpoint (torch.save writes a zip archive); "
            "save the model with Trainer.save_checkpoint."
        )
    if is_safetensors(head):
        return (
            f"{path} is a safetensors file (weights only); a Lightning checkpoint (.ckpt, "
            "from Trainer.save_checkpoint) is needed."
        )
    preview = _text_preview(head)
    if preview is not None:
        if preview.startswith("version https://git-lfs"):
            return f"{path} is a Git LFS pointer, not the checkpoint itself; fetch it with 'git lfs pull'."
        return f"{path} is a text file (it starts with {preview!r}), not a PyTorch checkpoint."
    return (
        f"{path} is not a PyTorch checkpoint: neither a zip archive (what torch.save writes) nor the legacy "
        f"format; it starts with the bytes {head[:8].hex(' ')}."
    )
