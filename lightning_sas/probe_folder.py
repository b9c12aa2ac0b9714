"""A folder of probe images on disk, read into :class:`~lightning_sas.probes.Probes`.

The command line (``lightning-sas audit --probe DIR --masks DIR --labels FILE``) reads its
probes with this module, and so can a script:

* :func:`read_labels`: ``filename,label`` rows of a CSV file, labels as class indices or names;
* :func:`read_probe_folder`: every image in a folder (file-name order), converted to RGB or grey,
  resized, scaled to [0, 1], with its mask (same file name in the masks folder) and label;
  files that cannot be decoded are skipped and listed (:class:`SkippedFile`);
* :func:`to_probes`: the folder as normalised tensors on a device;
* :func:`read_artifact_folder` and :func:`to_artifacts`: a folder of artifact patches with their
  masks (``lightning-sas audit --artifacts DIR``), as
  :class:`~lightning_sas.intervention.Artifacts` for the intervention test;
* :func:`class_index`: a class given by name or index (``--artifact-class``).

Problems with the inputs raise :class:`ProbeFolderError` (a ``ValueError``) with a message that
names the file; callers add which option or argument it came from.

Only the standard library is imported with this module: OpenCV, NumPy and torch are imported
by the functions that need them.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lightning_sas.intervention import Artifacts
    from lightning_sas.probes import Probes

__all__ = [
    "ARTIFACT_MASKS_FOLDER",
    "ARTIFACT_MASK_SUFFIX",
    "IMAGE_EXTENSIONS",
    "ArtifactFolder",
    "ProbeFolder",
    "ProbeFolderError",
    "SkippedFile",
    "class_index",
    "decode_image",
    "image_files",
    "prepare_image",
    "prepare_mask",
    "read_artifact_folder",
    "read_labels",
    "read_probe_folder",
    "to_artifacts",
    "to_probes",
]

#: File name endings read as probe images (and masks).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: First cells of a header row in a labels file.
_HEADER_NAMES = ("filename", "file", "name", "image")
#: Sub-folder of an artifact folder that holds the patches' masks (same file names).
ARTIFACT_MASKS_FOLDER = "masks"
#: Alternatively, a patch's mask lies beside it with this suffix: ``ruler.png`` + ``ruler_mask.png``.
ARTIFACT_MASK_SUFFIX = "_mask"


class ProbeFolderError(ValueError):
    """A probe folder or labels file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class SkippedFile:
    """A probe file the audit could not use, and why."""

    file: str
    reason: str


@dataclass
class ProbeFolder:
    """Probe images read from disk, before they become tensors.

    Attributes:
        names: File names of the readable probes, in order.
        images: ``[H, W, C]`` float32 arrays in [0, 1], resized.
        masks: ``[H, W]`` bool arrays (all False without a mask), resized.
        labels: Class index per probe, -1 where unknown.
        file_hashes: SHA-256 of each probe's file bytes.
        skipped: Files that could not be used, with the reason.
        file_sizes: ``(height, width)`` of each probe's file, before resizing.
    """

    names: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    file_hashes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    file_sizes: list[tuple[int, int]] = field(default_factory=list)


# ----------------------------------------------------------------------------- labels


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
    close = difflib.get_close_matches(label, names, n=1, cutoff=0.6)
    if not close:
        # Case slips ("Benign") are the commonest typo and difflib scores them low.
        close = [name for name in names if name.lower() == label.lower()][:1]
    suggestion = f"; did you mean {close[0]!r}?" if close else "."
    raise ProbeFolderError(
        f"{where}: label {label!r} is neither a class index nor one of {source} ({','.join(names)}){suggestion}"
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
    close = difflib.get_close_matches(label, names, n=1, cutoff=0.6)
    if not close:
        close = [name for name in names if name.lower() == label.lower()][:1]
    suggestion = f"; did you mean {close[0]!r}?" if close else "."
    raise ProbeFolderError(f"{label!r} is neither a class index nor one of {source} ({','.join(names)}){suggestion}")


# ----------------------------------------------------------------------------- images


def image_files(directory: Path) -> list[Path]:
    """The image files of ``directory`` (by extension, hidden files left out), in file-name order."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _mask_file(masks: Path, image_name: str) -> Path | None:
    """The mask of ``image_name``: same file name, or same stem with any image extension."""
    exact = masks / image_name
    if exact.is_file():
        return exact
    stem = Path(image_name).stem
    for extension in IMAGE_EXTENSIONS:
        for candidate in (masks / f"{stem}{extension}", masks / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


@contextmanager
def _opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own log while decoding.

    A corrupt PNG makes libpng print ``[ WARN:0@0.035] global grfmt_png.cpp ...`` to stderr;
    the caller reports undecodable files itself (as skipped), so those lines are only noise.
    """
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # builds without the logging bindings: nothing to silence
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


def decode_image(data: bytes) -> np.ndarray | None:
    """Decode image file bytes with OpenCV (BGR/BGRA/grey, any depth); ``None`` if undecodable.

    Example:
        >>> decode_image(b"not an image") is None
        True
    """
    import cv2
    import numpy as np

    if not data:
        return None
    with _opencv_quiet():
        try:
            pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return None
    return None if pixels is None or pixels.size == 0 else pixels


def _to_unit_range(pixels: np.ndarray) -> np.ndarray:
    import numpy as np

    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {pixels.dtype}")


def _height_width(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def prepare_image(pixels: np.ndarray, size: int | Sequence[int], channels: int) -> np.ndarray:
    """Decoded pixels (OpenCV's BGR/BGRA/grey) as float32 RGB or grey in [0, 1], resized.

    Args:
        pixels: What :func:`decode_image` returned.
        size: ``N`` (N x N) or ``(height, width)``.
        channels: 3 (RGB) or 1 (grey).

    Returns:
        ``[height, width, channels]`` float32 (bilinear resize).

    Raises:
        ValueError: For an unsupported pixel type or number of channels.

    Example:
        >>> import numpy as np
        >>> prepare_image(np.zeros((10, 20, 3), np.uint8), (4, 6), 1).shape
        (4, 6, 1)
    """
    import cv2
    import numpy as np

    height, width = _height_width(size)
    image = _to_unit_range(pixels)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"unsupported number of channels {image.shape[2]}")
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return np.ascontiguousarray(image, dtype=np.float32)


def prepare_mask(pixels: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Decoded mask pixels as ``[height, width]`` bool: nonzero in any colour channel is the ROI.

    Resized with nearest neighbours, so the mask stays binary.

    Example:
        >>> import numpy as np
        >>> prepare_mask(np.eye(4, dtype=np.uint8) * 255, 2).tolist()
        [[True, False], [False, True]]
    """
    import cv2
    import numpy as np

    height, width = _height_width(size)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=2) if pixels.shape[2] >= 3 else pixels[..., 0]
    nonzero = (pixels != 0).astype(np.uint8)
    return cv2.resize(nonzero, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def _read_mask(path: Path, size: int | Sequence[int]) -> np.ndarray:
    """The mask file as ``[height, width]`` bool.

    Raises:
        ValueError: If it cannot be read or decoded (the message names the mask).
    """
    try:
        pixels = decode_image(path.read_bytes())
    except OSError as error:
        raise ValueError(f"its mask {path.name} cannot be read: {error.strerror or error}") from None
    if pixels is None:
        raise ValueError(f"its mask {path.name} is not a decodable image")
    return prepare_mask(pixels, size)


def read_probe_folder(
    probe_dir: Path | str,
    masks_dir: Path | str | None,
    labels: dict[str, int],
    *,
    size: int | Sequence[int],
    channels: int,
) -> ProbeFolder:
    """Read, convert and resize every probe image (and its mask); undecodable files are skipped.

    Args:
        probe_dir: Folder of probe images (:data:`IMAGE_EXTENSIONS`).
        masks_dir: Folder of masks with the probes' file names, or ``None``.
        labels: Class index by file name (from :func:`read_labels`); others get -1.
        size: ``N`` (N x N) or ``(height, width)`` in pixels.
        channels: 3 (RGB) or 1 (grey).

    Returns:
        The readable probes, and the skipped files with their reason.

    Raises:
        ProbeFolderError: If the folder holds no image file, or none that can be read. The
            message starts with the folder.
    """
    import numpy as np

    probe_dir = Path(probe_dir)
    masks_path = Path(masks_dir) if masks_dir is not None else None
    height, width = _height_width(size)
    files = image_files(probe_dir)
    if not files:
        raise ProbeFolderError(f"{probe_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    folder = ProbeFolder()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            folder.skipped.append(SkippedFile(path.name, f"cannot be read: {error.strerror or error}"))
            continue
        pixels = decode_image(data)
        if pixels is None:
            reason = "empty file" if not data else "not a decodable image (corrupt or unsupported format)"
            folder.skipped.append(SkippedFile(path.name, reason))
            continue
        try:
            image = prepare_image(pixels, (height, width), channels)
        except (ValueError, OSError) as error:
            folder.skipped.append(SkippedFile(path.name, f"cannot be converted: {error}"))
            continue
        mask_path = _mask_file(masks_path, path.name) if masks_path is not None else None
        try:
            mask = (
                _read_mask(mask_path, (height, width))
                if mask_path is not None
                else np.zeros((height, width), dtype=bool)
            )
        except ValueError as error:
            folder.skipped.append(SkippedFile(path.name, str(error)))
            continue
        folder.names.append(path.name)
        folder.images.append(image)
        folder.masks.append(mask)
        folder.labels.append(labels.get(path.name, -1))
        folder.file_hashes.append(hashlib.sha256(data).hexdigest())
        folder.file_sizes.append((int(pixels.shape[0]), int(pixels.shape[1])))
    if not folder.names:
        reasons = "; ".join(f"{item.file}: {item.reason}" for item in folder.skipped)
        raise ProbeFolderError(f"{probe_dir}: no readable image ({reasons}).")
    return folder


def to_probes(
    folder: ProbeFolder, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> Probes:
    """The folder's images as normalised :class:`~lightning_sas.probes.Probes` on ``device``.

    Args:
        folder: From :func:`read_probe_folder`.
        mean: One value per channel (see :func:`lightning_sas.normalization.per_channel`).
        std: One value per channel.
        device: Where the tensors go.

    Returns:
        Probes with ``(image - mean) / std``, the labels, the masks as ROIs and the file names.
    """
    import numpy as np
    import torch

    from lightning_sas.probes import Probes

    images = torch.from_numpy(np.stack(folder.images)).permute(0, 3, 1, 2).contiguous()
    mean_tensor = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return Probes(
        images=((images - mean_tensor) / std_tensor).to(device),
        labels=torch.tensor(folder.labels, dtype=torch.long).to(device),
        roi=torch.from_numpy(np.stack(folder.masks)).to(device),
        names=list(folder.names),
        indices=[-1] * len(folder.names),
    )


# ----------------------------------------------------------------------------- artifacts


@dataclass
class ArtifactFolder:
    """Artifact patches read from disk, before they become tensors (see :func:`read_artifact_folder`).

    Attributes:
        names: File names of the patches, in order.
        patches: ``[h, w, C]`` float32 arrays in [0, 1], all of one size.
        masks: ``[h, w]`` bool arrays: the artifact's pixels in each patch.
        mask_sources: Where each mask came from: a file name relative to the folder, or
            ``"alpha"`` (the patch's transparency).
        file_hashes: SHA-256 of each patch file's bytes.
        full_size: Whether the patches are whole probe-sized images (resized to the probes' size
            and pasted where they are) rather than small patches (kept at their size, pasted at
            seeded random positions).
    """

    names: list[str] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    mask_sources: list[str] = field(default_factory=list)
    file_hashes: list[str] = field(default_factory=list)
    full_size: bool = False


def _artifact_mask_file(directory: Path, image_name: str) -> Path | None:
    """``DIR/masks/<name>`` (any image extension), else ``DIR/<stem>_mask.<ext>``."""
    masks = directory / ARTIFACT_MASKS_FOLDER
    if masks.is_dir():
        found = _mask_file(masks, image_name)
        if found is not None:
            return found
    stem = Path(image_name).stem
    for extension in IMAGE_EXTENSIONS:
        for candidate in (
            directory / f"{stem}{ARTIFACT_MASK_SUFFIX}{extension}",
            directory / f"{stem}{ARTIFACT_MASK_SUFFIX}{extension.upper()}",
        ):
            if candidate.is_file():
                return candidate
    return None


def read_artifact_folder(
    directory: Path | str,
    *,
    size: int | Sequence[int],
    channels: int,
    probe_file_sizes: Sequence[Sequence[int]] = (),
) -> ArtifactFolder:
    """Read a folder of artifact patches and their masks.

    Layout: every image in ``directory`` (:data:`IMAGE_EXTENSIONS`, file-name order) is a patch,
    except files named ``<stem>_mask.<ext>``. A patch's mask is ``directory/masks/<its file
    name>`` (any image extension), else ``directory/<stem>_mask.<ext>``, else the patch's alpha
    channel (a PNG with transparency: opaque pixels are the artifact). Nonzero mask pixels are
    the artifact; a mask has its patch's size.

    A patch as large as the probes (``size``) or as a probe file (``probe_file_sizes``) is a
    whole image with the artifact where it really is: it is resized to ``size`` like the probes
    (bilinear; its mask with nearest neighbours) and pasted at its place. Any other patch keeps
    its pixel size and is pasted at seeded random positions; it must fit in ``size``, and
    patches of different sizes are padded (bottom and right, outside their masks) to the
    largest. Whole images and small patches cannot be mixed.

    Args:
        directory: The artifact folder.
        size: ``N`` or ``(height, width)`` of the probes.
        channels: 3 (RGB) or 1 (grey), as the probes.
        probe_file_sizes: ``(height, width)`` of the probe files before resizing
            (:attr:`ProbeFolder.file_sizes`).

    Returns:
        The patches and masks, in [0, 1] (not normalised; see :func:`to_artifacts`).

    Raises:
        ProbeFolderError: If the folder holds no patch, a patch or mask cannot be decoded, a
            patch has no mask or an empty one, a mask's size differs from its patch's, a small
            patch is larger than the probes, or whole images and small patches are mixed. The
            message starts with the folder or the file.
    """
    import numpy as np

    directory = Path(directory)
    height, width = _height_width(size)
    full_sizes = {(height, width), *((int(h), int(w)) for h, w in probe_file_sizes)}
    files = [path for path in image_files(directory) if not path.stem.endswith(ARTIFACT_MASK_SUFFIX)]
    if not files:
        raise ProbeFolderError(
            f"{directory}: no artifact patch images ({', '.join(IMAGE_EXTENSIONS)}); put each patch in the folder "
            f"and its mask in {ARTIFACT_MASKS_FOLDER}/ with the same file name."
        )
    folder = ArtifactFolder()
    kinds: dict[bool, str] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ProbeFolderError(f"{path}: cannot be read ({error.strerror or error}).") from None
        pixels = decode_image(data)
        if pixels is None:
            raise ProbeFolderError(f"{path}: not a decodable image (corrupt or unsupported format).")
        patch_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        mask_path = _artifact_mask_file(directory, path.name)
        if mask_path is not None:
            try:
                mask_pixels = decode_image(mask_path.read_bytes())
            except OSError as error:
                raise ProbeFolderError(f"{mask_path}: cannot be read ({error.strerror or error}).") from None
            if mask_pixels is None:
                raise ProbeFolderError(f"{mask_path}: the mask of {path.name} is not a decodable image.")
            if mask_pixels.shape[:2] != patch_size:
                raise ProbeFolderError(
                    f"{mask_path}: the mask is {mask_pixels.shape[0]}x{mask_pixels.shape[1]} pixels but its patch "
                    f"{path.name} is {patch_size[0]}x{patch_size[1]}; a mask has its patch's size."
                )
            source = str(mask_path.relative_to(directory))
        elif pixels.ndim == 3 and pixels.shape[2] == 4:
            alpha = pixels[..., 3]
            mask_pixels = alpha >= (np.iinfo(alpha.dtype).max + 1) // 2 if alpha.dtype.kind == "u" else alpha >= 0.5
            mask_pixels = mask_pixels.astype(np.uint8)
            source = "alpha"
        else:
            raise ProbeFolderError(
                f"{path}: the artifact patch has no mask; put it in {directory / ARTIFACT_MASKS_FOLDER / path.name} "
                f"or {directory / (path.stem + ARTIFACT_MASK_SUFFIX + '.png')}, or give the patch an alpha channel."
            )
        full = patch_size in full_sizes
        kinds.setdefault(full, path.name)
        if len(kinds) > 1:
            raise ProbeFolderError(
                f"{directory}: {kinds[True]} is a whole probe-sized image but {kinds[False]} is a small patch; "
                "give either whole images (artifact in place) or small patches, not both."
            )
        target = (height, width) if full else patch_size
        if not full and (patch_size[0] > height or patch_size[1] > width):
            raise ProbeFolderError(
                f"{path}: the patch is {patch_size[0]}x{patch_size[1]} pixels, larger than the probes' "
                f"{height}x{width} (--image-size) and not the size of a probe file; crop it to the artifact."
            )
        try:
            patch = prepare_image(pixels, target, channels)
        except ValueError as error:
            raise ProbeFolderError(f"{path}: cannot be converted ({error}).") from None
        mask = prepare_mask(mask_pixels, target)
        if not mask.any():
            where = "its alpha channel is fully transparent" if source == "alpha" else f"{source} is empty"
            raise ProbeFolderError(f"{path}: the artifact mask marks no pixel ({where}).")
        folder.names.append(path.name)
        folder.patches.append(patch)
        folder.masks.append(mask)
        folder.mask_sources.append(source)
        folder.file_hashes.append(hashlib.sha256(data).hexdigest())
    folder.full_size = bool(next(iter(kinds)))
    # Small patches of several sizes: pad to the largest (outside the masks, so nothing extra is pasted).
    rows = max(patch.shape[0] for patch in folder.patches)
    columns = max(patch.shape[1] for patch in folder.patches)
    for position, (patch, mask) in enumerate(zip(folder.patches, folder.masks, strict=True)):
        pad = ((0, rows - patch.shape[0]), (0, columns - patch.shape[1]))
        if any(after for _, after in pad):
            folder.patches[position] = np.pad(patch, (*pad, (0, 0)))
            folder.masks[position] = np.pad(mask, pad)
    return folder


def to_artifacts(
    folder: ArtifactFolder,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    target_class: int,
    trials: int = 4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Artifacts:
    """The folder's patches as :class:`~lightning_sas.intervention.Artifacts`, normalised like the probes.

    Args:
        folder: From :func:`read_artifact_folder`.
        mean: One value per channel, as for :func:`to_probes`.
        std: One value per channel.
        target_class: The class the artifact is suspected to push predictions to.
        trials: Pastes per probe.
        seed: Seed of the paste positions and patch choices.
        device: Where the tensors go.
    """
    import numpy as np
    import torch

    from lightning_sas.intervention import Artifacts

    patches = torch.from_numpy(np.stack(folder.patches)).permute(0, 3, 1, 2).contiguous()
    mean_tensor = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return Artifacts(
        target_class=target_class,
        patches=((patches - mean_tensor) / std_tensor).to(device),
        masks=torch.from_numpy(np.stack(folder.masks)).to(device),
        trials=trials,
        seed=seed,
    )
