"""Artifact patches and their masks written as the folder ``lightning-sas audit --artifacts DIR`` reads.

:func:`export_artifacts` writes ``DIR/<name>.png``, ``DIR/masks/<name>.png`` and a
``manifest.json`` (:mod:`lightning_sas.probes.export_folder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401  (the doctest's ``torch``)
from torch import Tensor

from lightning_sas.probes.export_folder import (
    MASKS_FOLDER,
    ExportError,
    png_bytes,
    prepare_out,
    to_pixels,
    write_hashed,
    write_manifest,
)
from lightning_sas.validation import check_normalization

__all__ = ["export_artifacts"]


def export_artifacts(
    patches: Tensor,
    masks: Tensor,
    out_dir: Path | str,
    *,
    names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write artifact patches and masks as the folder ``lightning-sas audit --artifacts`` reads.

    ``out_dir/<name>.png`` holds each patch (de-normalised like :func:`~lightning_sas.probes.export.export_probes`),
    ``out_dir/masks/<name>.png`` its mask (255 = artifact pixel), and ``manifest.json`` their
    SHA-256.

    Args:
        patches: ``[N, C, h, w]`` float patches (C = 1 or 3), e.g. an
            :class:`~lightning_sas.trust.intervention.Artifacts`' ``patches``.
        masks: ``[N, h, w]`` bool or 0/1 masks of the artifact pixels.
        out_dir: The folder to write: new, empty, or holding a previous artifacts export (replaced).
        names: File stems (default ``artifact_000``, ...).
        mean: Normalisation mean of the patches, if they are normalised.
        std: Normalisation standard deviation.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: If shapes do not fit, a mask is empty, ``names`` has the wrong length or
            repeats, or ``out_dir`` holds other files (:class:`ExportFolderError`).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     out = export_artifacts(torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4), Path(folder) / "ruler")
        ...     sorted(str(path.relative_to(out)) for path in out.rglob("*.png"))
        ['artifact_000.png', 'masks/artifact_000.png']
    """
    stems = _checked_stems(patches, masks, names)
    try:
        mean, std = check_normalization(mean, std)
    except ValueError as error:
        raise ExportError(str(error)) from None
    binary = masks > 0.5 if masks.is_floating_point() else masks.bool()
    empty = [stems[position] for position in range(len(stems)) if not bool(binary[position].any())]
    if empty:
        raise ExportError(f"the masks of {', '.join(empty)} mark no pixel.")
    out = Path(out_dir)
    prepare_out(out, "artifacts")
    (out / MASKS_FOLDER).mkdir(exist_ok=True)
    entries = [
        _write_artifact(out, stem, patch, mask, mean, std)
        for stem, patch, mask in zip(stems, patches, binary, strict=True)
    ]
    write_manifest(
        out,
        {"kind": "artifacts", "mean": mean, "std": std, "artifacts": entries},
    )
    return out


def _checked_stems(patches: Tensor, masks: Tensor, names: Sequence[str] | None) -> list[str]:
    """The file stems of the patches, after checking the shapes of ``patches`` and ``masks``.

    Raises:
        ExportError: If ``patches`` is not ``[N, C, h, w]``, ``masks`` not ``[N, h, w]``, or
            ``names`` has the wrong length or repeats.
    """
    if not isinstance(patches, Tensor) or patches.dim() != 4:
        raise ExportError(f"`patches` must be a tensor [N, C, h, w], got {getattr(patches, 'shape', type(patches))}.")
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (patches.shape[0], *patches.shape[2:]):
        raise ExportError(
            f"`masks` must have shape [N, h, w] = {[patches.shape[0], *patches.shape[2:]]}, "
            f"got {list(getattr(masks, 'shape', []))}."
        )
    stems = list(names) if names is not None else [f"artifact_{position:03d}" for position in range(len(patches))]
    if len(stems) != len(patches) or len(set(stems)) != len(stems):
        raise ExportError(f"`names` must give {len(patches)} distinct file stems, got {stems!r}.")
    return stems


def _write_artifact(
    out: Path, stem: str, patch: Tensor, mask: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> dict[str, Any]:
    """Write one patch and its bool mask; its manifest entry."""
    pixels, _ = to_pixels(patch, mean, std)
    name = f"{stem}.png"
    return {
        "file": name,
        "sha256": write_hashed(out / name, png_bytes(pixels)),
        "mask": f"{MASKS_FOLDER}/{name}",
        "mask_sha256": write_hashed(
            out / MASKS_FOLDER / name, png_bytes(mask.detach().cpu().numpy().astype(np.uint8) * 255)
        ),
    }
