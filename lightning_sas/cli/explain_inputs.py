"""The inputs of ``lightning-sas explain``, checked and read before the model is loaded.

:func:`read_inputs` checks the options (methods, sizes, normalisation, ``--target``), the image
names and ``--out`` (no file of this run may exist there without ``--overwrite``), then decodes
every image: an unreadable one fails before any model work.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_sas.cli.errors import UsageError
from lightning_sas.cli.explain_parser import IMAGENET_MEAN, IMAGENET_STD
from lightning_sas.cli.options import name_list, parse_image_size
from lightning_sas.probes.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAP_FILES", "ExplainInputs", "read_inputs"]

#: The files written per image and method, as endings after the method's name.
MAP_FILES = (".png", "_overlay.jpg", ".npy")


@dataclass
class ExplainInputs:
    """The options and images, read and checked before the model is loaded."""

    paths: list[Path]
    #: The decoded images (OpenCV's BGR, BGRA or grey, any depth), one per path.
    pixels: list[np.ndarray]
    method_names: list[str]
    #: ``--image-size``; ``None`` when not given.
    image_size: tuple[int, int] | None
    mean: list[float]
    std: list[float]
    class_names: list[str] | None
    #: The class index to explain; ``None`` for the prediction.
    target: int | None
    out: Path


def read_inputs(args: argparse.Namespace) -> ExplainInputs:
    """Check the options, ``--out`` and the image names, and decode every image (no model needed).

    Raises:
        UsageError: For the first problem found.
    """
    method_names = name_list(args.methods) or []
    if not method_names:
        raise UsageError("--methods needs at least one method name, e.g. --methods sas,gradcam.")
    image_size = None if args.image_size is None else parse_image_size(args.image_size)
    mean, std = _normalization(args)
    class_names = name_list(args.class_names)
    target = _parse_target(args.target, class_names)
    paths = [Path(text) for text in args.images]
    stems: dict[str, Path] = {}
    for path in paths:
        other = stems.setdefault(path.stem, path)
        if other is not path:
            raise UsageError(
                f"IMAGE {other} and {path} have the same name {path.stem!r}, so their maps would share the folder "
                f"{Path(args.out) / path.stem}; rename one, or explain them in separate runs with different --out."
            )
    out = Path(args.out)
    _check_out(out, paths, method_names, args.overwrite)
    pixels = [_read_image(path) for path in paths]
    return ExplainInputs(paths, pixels, method_names, image_size, mean, std, class_names, target, out)


def _normalization(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """``--mean`` / ``--std`` per channel; ImageNet's (their average for one channel) when not given.

    Raises:
        UsageError: As :func:`~lightning_sas.cli.audit_inputs.read_normalization`.
    """
    from lightning_sas.cli.audit_inputs import read_normalization

    if args.channels == 3:
        return read_normalization(args, (list(IMAGENET_MEAN), list(IMAGENET_STD)))
    averages = [round(sum(values) / len(values), 3) for values in (IMAGENET_MEAN, IMAGENET_STD)]
    return read_normalization(args, ([averages[0]], [averages[1]]))


def _parse_target(text: str, class_names: list[str] | None) -> int | None:
    """``--target``: ``pred`` (``None``), a class index, or a name from ``--class-names``.

    Raises:
        UsageError: For anything else, with the closest class name.
    """
    value = text.strip()
    if value == "pred":
        return None
    if re.fullmatch(r"\d+", value):
        return int(value)
    if class_names is not None and value in class_names:
        return class_names.index(value)
    if class_names is None:
        raise UsageError(
            f"--target {text!r}: expected pred, a class index or a class name from --class-names (none given), "
            "e.g. --target 3."
        )
    close = difflib.get_close_matches(value, class_names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(
        f"--target {text!r} is not one of --class-names ({', '.join(class_names)}); {hint}"
        "give pred, a class index or one of those names."
    )


def _check_out(out: Path, paths: list[Path], method_names: list[str], overwrite: bool) -> None:
    """``--out`` must be a folder (or not exist yet) and hold none of this run's files unless ``overwrite``.

    Raises:
        UsageError: If it is a file, an image's folder in it is a file, or files would be replaced.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; give a folder (it is created if missing).")
    for path in paths:
        folder = out / path.stem
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {out}: {folder} exists and is not a folder; the maps of {path} go there.")
    existing = [
        out / path.stem / f"{name}{ending}"
        for path in paths
        for name in method_names
        for ending in MAP_FILES
        if (out / path.stem / f"{name}{ending}").exists()
    ]
    if existing and not overwrite:
        raise UsageError(
            f"--out {out} already holds {len(existing)} of the files this run writes (e.g. {existing[0]}); "
            "pass --overwrite to replace them, or give another --out."
        )


def _read_image(path: Path) -> np.ndarray:
    """The decoded image file ``path``, checked to be convertible to RGB.

    Raises:
        UsageError: For a missing, unreadable or undecodable file (the message names it).
    """
    from lightning_sas.probes.images import decode_image, prepare_image

    if not path.is_file():
        raise UsageError(f"IMAGE {path}: {'a folder, not an image file' if path.is_dir() else 'no such file'}.")
    try:
        pixels = decode_image(path.read_bytes())
    except OSError as error:
        raise UsageError(f"IMAGE {path} cannot be read ({error.strerror or error}).") from None
    readable = ", ".join(extension[1:] for extension in IMAGE_EXTENSIONS)
    if pixels is None:
        raise UsageError(f"IMAGE {path} is not a decodable image (readable: {readable}).")
    try:
        prepare_image(pixels[:1, :1], 1, 3)  # one pixel: the pixel type and channels are supported
    except ValueError as error:
        raise UsageError(f"IMAGE {path}: {error}.") from None
    return pixels
