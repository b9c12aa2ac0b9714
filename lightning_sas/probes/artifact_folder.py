"""A folder of artifact patches and their masks on disk (``lightning-sas audit --artifacts DIR``).

:func:`read_artifact_folder` reads it into an :class:`ArtifactFolder`, which
:func:`lightning_sas.trust.intervention.to_artifacts` turns into the intervention's input.
Problems raise :class:`~lightning_sas.probes.errors.ProbeFolderError` with a message that names
the folder or the file.

Only the standard library is imported with this module: OpenCV and NumPy are imported by the
functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_sas.probes.errors import ProbeFolderError
from lightning_sas.probes.images import (
    IMAGE_EXTENSIONS,
    decode_image,
    height_width,
    image_files,
    mask_file,
    prepare_image,
    prepare_mask,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ARTIFACT_MASKS_FOLDER", "ARTIFACT_MASK_SUFFIX", "ArtifactFolder", "read_artifact_folder"]

#: Sub-folder of an artifact folder that holds the patches' masks (same file names).
ARTIFACT_MASKS_FOLDER = "masks"
#: Alternatively, a patch's mask lies beside it with this suffix: ``ruler.png`` + ``ruler_mask.png``.
ARTIFACT_MASK_SUFFIX = "_mask"


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
        found = mask_file(masks, image_name)
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

    Layout: every image in ``directory`` (:data:`~lightning_sas.probes.images.IMAGE_EXTENSIONS`,
    file-name order) is a patch, except files named ``<stem>_mask.<ext>``. A patch's mask is
    ``directory/masks/<its file name>`` (any image extension), else ``directory/<stem>_mask.<ext>``,
    else the patch's alpha channel (a PNG with transparency: opaque pixels are the artifact).
    Nonzero mask pixels are the artifact; a mask has its patch's size.

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
            (:attr:`~lightning_sas.probes.folder.ProbeFolder.file_sizes`).

    Returns:
        The patches and masks, in [0, 1] (not normalised; see :func:`lightning_sas.trust.intervention.to_artifacts`).

    Raises:
        ProbeFolderError: If the folder holds no patch, a patch or mask cannot be decoded, a
            patch has no mask or an empty one, a mask's size differs from its patch's, a small
            patch is larger than the probes, or whole images and small patches are mixed. The
            message starts with the folder or the file.
    """
    directory = Path(directory)
    height, width = height_width(size)
    full_sizes = {(height, width), *((int(h), int(w)) for h, w in probe_file_sizes)}
    folder = ArtifactFolder()
    kinds: dict[bool, str] = {}
    for path in _patch_files(directory):
        data, pixels = _read_patch(path)
        patch_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        mask_pixels, source = _patch_mask(directory, path, pixels, patch_size)
        target = _patch_target(directory, path, patch_size, full_sizes, kinds, (height, width))
        patch, mask = _prepared_patch(path, pixels, mask_pixels, source, target, channels)
        folder.names.append(path.name)
        folder.patches.append(patch)
        folder.masks.append(mask)
        folder.mask_sources.append(source)
        folder.file_hashes.append(hashlib.sha256(data).hexdigest())
    folder.full_size = bool(next(iter(kinds)))
    _pad_to_largest(folder)
    return folder


def _patch_target(
    directory: Path,
    path: Path,
    patch_size: tuple[int, int],
    full_sizes: set[tuple[int, int]],
    kinds: dict[bool, str],
    probe_size: tuple[int, int],
) -> tuple[int, int]:
    """The size a patch is converted to: the probes' for a whole image, else its own.

    Args:
        directory: The artifact folder.
        path: The patch file.
        patch_size: ``(height, width)`` of the patch file.
        full_sizes: The sizes of a whole probe-sized image.
        kinds: The first patch of each kind (whole image or not) so far; updated.
        probe_size: ``(height, width)`` of the probes.

    Raises:
        ProbeFolderError: If whole images and small patches are mixed, or a small patch is larger
            than the probes.
    """
    height, width = probe_size
    full = patch_size in full_sizes
    kinds.setdefault(full, path.name)
    if len(kinds) > 1:
        raise ProbeFolderError(
            f"{directory}: {kinds[True]} is a whole probe-sized image but {kinds[False]} is a small patch; "
            "give either whole images (artifact in place) or small patches, not both."
        )
    if not full and (patch_size[0] > height or patch_size[1] > width):
        raise ProbeFolderError(
            f"{path}: the patch is {patch_size[0]}x{patch_size[1]} pixels, larger than the probes' "
            f"{height}x{width} (--image-size) and not the size of a probe file; crop it to the artifact."
        )
    return (height, width) if full else patch_size


def _prepared_patch(
    path: Path, pixels: np.ndarray, mask_pixels: np.ndarray, source: str, target: tuple[int, int], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """The patch as float32 in [0, 1] and its bool mask, both of size ``target``.

    Raises:
        ProbeFolderError: If the patch cannot be converted, or its mask marks no pixel.
    """
    try:
        patch = prepare_image(pixels, target, channels)
    except ValueError as error:
        raise ProbeFolderError(f"{path}: cannot be converted ({error}).") from None
    mask = prepare_mask(mask_pixels, target)
    if not mask.any():
        where = "its alpha channel is fully transparent" if source == "alpha" else f"{source} is empty"
        raise ProbeFolderError(f"{path}: the artifact mask marks no pixel ({where}).")
    return patch, mask


def _patch_files(directory: Path) -> list[Path]:
    """The patch images of ``directory`` (its image files but ``<stem>_mask.<ext>``); at least one."""
    files = [path for path in image_files(directory) if not path.stem.endswith(ARTIFACT_MASK_SUFFIX)]
    if not files:
        raise ProbeFolderError(
            f"{directory}: no artifact patch images ({', '.join(IMAGE_EXTENSIONS)}); put each patch in the folder "
            f"and its mask in {ARTIFACT_MASKS_FOLDER}/ with the same file name."
        )
    return files


def _read_patch(path: Path) -> tuple[bytes, np.ndarray]:
    """A patch file's bytes and decoded pixels; :class:`ProbeFolderError` if unreadable or undecodable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ProbeFolderError(f"{path}: cannot be read ({error.strerror or error}).") from None
    pixels = decode_image(data)
    if pixels is None:
        raise ProbeFolderError(f"{path}: not a decodable image (corrupt or unsupported format).")
    return data, pixels


def _patch_mask(directory: Path, path: Path, pixels: np.ndarray, patch_size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The undecoded mask pixels of the patch at ``path``, and where they came from.

    A mask file (:func:`_artifact_mask_file`) of the patch's size, else the patch's alpha channel
    (``"alpha"``: opaque pixels are the artifact).

    Raises:
        ProbeFolderError: If the mask file cannot be read or decoded, has another size, or the
            patch has neither a mask file nor an alpha channel.
    """
    import numpy as np

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
        return mask_pixels, str(mask_path.relative_to(directory))
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        alpha = pixels[..., 3]
        mask_pixels = alpha >= (np.iinfo(alpha.dtype).max + 1) // 2 if alpha.dtype.kind == "u" else alpha >= 0.5
        return mask_pixels.astype(np.uint8), "alpha"
    raise ProbeFolderError(
        f"{path}: the artifact patch has no mask; put it in {directory / ARTIFACT_MASKS_FOLDER / path.name} "
        f"or {directory / (path.stem + ARTIFACT_MASK_SUFFIX + '.png')}, or give the patch an alpha channel."
    )


def _pad_to_largest(folder: ArtifactFolder) -> None:
    """Pad small patches of several sizes to the largest (outside the masks, so nothing extra is pasted)."""
    import numpy as np

    rows = max(patch.shape[0] for patch in folder.patches)
    columns = max(patch.shape[1] for patch in folder.patches)
    for position, (patch, mask) in enumerate(zip(folder.patches, folder.masks, strict=True)):
        pad = ((0, rows - patch.shape[0]), (0, columns - patch.shape[1]))
        if any(after for _, after in pad):
            folder.patches[position] = np.pad(patch, (*pad, (0, 0)))
            folder.masks[position] = np.pad(mask, pad)
