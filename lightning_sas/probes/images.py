"""Image files of a probe or artifact folder: finding them, decoding them, and converting pixels.

* :func:`image_files`: the image files of a folder (:data:`IMAGE_EXTENSIONS`), in file-name order;
* :func:`mask_file`: the mask of an image in a masks folder (same file name, or same stem);
* :func:`decode_image`: file bytes decoded with OpenCV, its own log silenced;
* :func:`prepare_image` / :func:`prepare_mask`: decoded pixels as float32 RGB or grey in [0, 1]
  (bilinear resize), or as a bool mask (nearest-neighbour resize).

Only the standard library is imported with this module: OpenCV and NumPy are imported by the
functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_image",
    "height_width",
    "image_files",
    "mask_file",
    "prepare_image",
    "prepare_mask",
    "read_mask",
]

#: File name endings read as probe images (and masks).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_files(directory: Path) -> list[Path]:
    """The image files of ``directory`` (by extension, hidden files left out), in file-name order."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def mask_file(masks: Path, image_name: str) -> Path | None:
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
    """uint8, uint16 or float pixels as float32 in [0, 1]."""
    import numpy as np

    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {pixels.dtype}")


def height_width(size: int | Sequence[int]) -> tuple[int, int]:
    """``N`` as ``(N, N)``; ``(height, width)`` as two ints."""
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

    height, width = height_width(size)
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

    height, width = height_width(size)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=2) if pixels.shape[2] >= 3 else pixels[..., 0]
    nonzero = (pixels != 0).astype(np.uint8)
    return cv2.resize(nonzero, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def read_mask(path: Path, size: int | Sequence[int]) -> np.ndarray:
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
