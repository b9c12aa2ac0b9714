"""Labels of probe files and classes given on the command line, as class indices.

* :func:`read_labels`: ``filename,label`` rows of a CSV file (``--labels``), labels as class
  indices or names;
* :func:`class_index`: a class given by name or index (``--artifact-class``).

Problems raise :class:`~lightning_sas.probes.errors.ProbeFolderError` with a message that names
the file (and line); callers add which option it came from.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from lightning_sas.probes.errors import ProbeFolderError

__all__ = ["class_index", "read_labels"]

#: First cells of a header row in a labels file.
_HEADER_NAMES = ("filename", "file", "name", "image")


def read_labels(
    path: Path | str, class_names: Sequence[str] | None, *, class_names_source: str = "the class names"
) -> dict[str, int]:
    """``{file name: class index}`` from a ``filename,label`` CSV.

    Blank rows and rows starting with ``#`` are ignored; a first row ``filename,label`` (or
    ``file``/``name``/``image``) is a header. A label is a class index or one of
    ``class_names``; ``-1`` means unknown.

    Args:
        path: The CSV file.
        class_names: Class names by index, or ``None``.
        class_names_source: How messages refer to ``class_names`` (the CLI says ``--class-names``).

    Returns:
        The label of each file name listed.

    Raises:
        ProbeFolderError: If the file cannot be read, a row is malformed, a name is not a class
            name (with a "did you mean" suggestion) or an index is out of range. The message
            starts with the path (and line).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "labels.csv")
        ...     _ = open(path, "w").write("filename,label\\na.png,malignant\\nb.png,0\\n")
        ...     read_labels(path, ["benign", "malignant"])
        {'a.png': 1, 'b.png': 0}
    """
    labels: dict[str, int] = {}
    names = {name: index for index, name in enumerate(class_names or [])}
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ProbeFolderError(f"{path}: cannot be read as a CSV file ({error}).") from None
    for line, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2:
            raise ProbeFolderError(f"{path} line {line}: expected 'filename,label', got {','.join(row)!r}.")
        file_name, label = cells[0], cells[1]
        if line == 1 and file_name.lower() in _HEADER_NAMES and label not in names:
            continue
        labels[file_name] = _label_index(label, class_names, class_names_source, f"{path} line {line}")
    return labels


def _label_index(label: str, class_names: Sequence[str] | None, source: str, where: str) -> int:
    """A label cell as a class index (see :func:`read_labels`)."""
    names = list(class_names or [])
    if label in names:
        return names.index(label)
    if re.fullmatch(r"-?\d+", label):
        index = int(label)
        if index < -1 or (names and index >= len(names)):
            raise ProbeFolderError(
                f"{where}: class index {index} is out of range for the {len(names)} classes of {source} "
                f"({','.join(names)}); use 0..{len(names) - 1}, or -1 for unknown."
                if names
                else f"{where}: class index {index} is negative; use -1 for unknown."
            )
        return index
    if not names:
        raise ProbeFolderError(
            f"{where}: label {label!r} is not a class index, and {source} are not given to match names against."
        )
    raise ProbeFolderError(
        f"{where}: label {label!r} is neither a class index nor one of {source} ({','.join(names)})"
        f"{_did_you_mean(label, names)}"
    )


def class_index(text: str, class_names: Sequence[str] | None, *, source: str = "the class names") -> int:
    """A class given as a name from ``class_names`` or as an index (``--artifact-class``).

    Args:
        text: A class name or a non-negative index.
        class_names: Class names by index, or ``None``.
        source: How messages refer to ``class_names`` (the CLI says ``--class-names``).

    Raises:
        ProbeFolderError: For a negative or out-of-range index, a name without class names to
            look it up in, or an unknown name (with a "did you mean" suggestion).

    Example:
        >>> class_index("malignant", ["benign", "malignant"]), class_index("0", None)
        (1, 0)
    """
    names = list(class_names or [])
    label = text.strip()
    if label in names:
        return names.index(label)
    if re.fullmatch(r"[+-]?\d+", label):
        index = int(label)
        if index < 0 or (names and index >= len(names)):
            allowed = f"0..{len(names) - 1} for the {len(names)} classes of {source}" if names else "an index >= 0"
            raise ProbeFolderError(f"class index {index} is out of range; use {allowed}.")
        return index
    if not names:
        raise ProbeFolderError(f"{label!r} is not a class index, and {source} are not given to look the name up in.")
    raise ProbeFolderError(
        f"{label!r} is neither a class index nor one of {source} ({','.join(names)}){_did_you_mean(label, names)}"
    )


def _did_you_mean(label: str, names: Sequence[str]) -> str:
    """``"; did you mean 'benign'?"`` for the class name closest to ``label``, else ``"."``."""
    close = difflib.get_close_matches(label, names, n=1, cutoff=0.6)
    if not close:
        # Case slips ("Benign") are the commonest typo and difflib scores them low.
        close = [name for name in names if name.lower() == label.lower()][:1]
    return f"; did you mean {close[0]!r}?" if close else "."
