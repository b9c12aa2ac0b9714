"""The ``lightning-sas`` command line: ``lightning-sas audit`` audits a saved checkpoint.

The same audit as the training callback, on a checkpoint and a folder of probe images, for
nightly jobs: TensorBoard event files with the callback's tags, ``report.html`` for people,
``summary.json`` for machines, and an exit code a scheduler can act on:

* 0: the audit ran and no shortcut threshold was crossed (or no probe has a mask);
* 1: the audit ran and a method's mean ``roi_share`` is above ``--shortcut-threshold``;
* 2: usage or input error (bad path, unloadable checkpoint, no readable image).

Heavy libraries (torch, Lightning, OpenCV) are imported only when a command needs them, so
``--help`` and most usage errors answer at once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lightning.pytorch import LightningModule

    from lightning_sas.audit import AuditResult
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.probes import Probes
    from lightning_sas.report import SkippedFile

PROGRAM = "lightning-sas"
EXIT_OK = 0
EXIT_SHORTCUT = 1
EXIT_USAGE = 2
#: File name endings read as probe images (and masks).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_EPILOG = """\
examples:
  # audit last night's checkpoint; exit 1 if a method's mean roi_share is above 0.5
  lightning-sas audit \\
      --checkpoint runs/last.ckpt \\
      --model my_project.models:LesionClassifier \\
      --probe probes/images --masks probes/rulers --labels probes/labels.csv \\
      --class-names benign,malignant \\
      --image-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
      --methods sas,gradcam --shortcut-threshold 0.5 \\
      --baseline audits/2024-05-01/summary.json \\
      --out audits/2024-05-02

  # a quick look on the CPU with a cheap SaS
  lightning-sas audit --checkpoint last.ckpt --model pkg.mod:Net --probe probes \\
      --device cpu --sas-iterations 20 --out /tmp/audit

probe folder:
  Images (png, jpg, jpeg, bmp, tif, tiff, webp) are read in file-name order, converted to
  RGB (or grey with --channels 1), resized to --image-size x --image-size (bilinear),
  scaled to [0, 1] and, with --mean/--std, normalised as (x - mean) / std. Without
  --mean/--std the model gets [0, 1] inputs. A mask has the probe's file name (any image
  extension) in --masks; nonzero pixels are the region of interest (e.g. the ruler).
  Files that cannot be decoded are skipped and listed in the report.

labels file:
  CSV rows "filename,label" (an optional header row "filename,label"); the label is a class
  index or one of --class-names.

output (in --out):
  events.out.tfevents.*  TensorBoard, same tags as the training callback (step 0)
  report.html            self-contained report: overlays and scores per probe
  summary.json           scores, probe manifest with content hashes, versions, command

exit status:
  0  audit ran, no shortcut threshold crossed (or no probe has a mask)
  1  audit ran and a method's mean roi_share over the masked probes is above
     --shortcut-threshold (stdout and the report name the method and probes)
  2  usage or input error: bad path, unloadable checkpoint, no readable image
"""


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit status 2."""


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
    """

    names: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    file_hashes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


# ----------------------------------------------------------------------------- arguments


def _float_list(values: Sequence[str] | None, option: str) -> list[float] | None:
    """Numbers given as ``0.5 0.5 0.5`` or ``0.5,0.5,0.5``."""
    if values is None:
        return None
    parts = [part for value in values for part in value.replace(",", " ").split()]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise UsageError(
            f"{option} takes numbers (e.g. {option} 0.485 0.456 0.406), got {' '.join(values)!r}."
        ) from None


def _name_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-sas`` with its ``audit`` subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Audit image classifiers trained with PyTorch Lightning: which pixels drive their decisions.",
        epilog=f"run '{PROGRAM} audit --help' for the audit's options and examples.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    audit = commands.add_parser(
        "audit",
        help="audit a saved checkpoint on a folder of probe images",
        description=(
            "Explain a folder of probe images with a saved LightningModule checkpoint (SaS, Grad-CAM),\n"
            "score the maps against region-of-interest masks, and write TensorBoard events, report.html\n"
            "and summary.json to --out. Exits 1 when a shortcut threshold is crossed."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = audit.add_argument_group("inputs")
    inputs.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="Lightning checkpoint (.ckpt) to audit, e.g. runs/last.ckpt.",
    )
    inputs.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="import path of the LightningModule class, e.g. my_project.models:LesionClassifier "
        "(the module must be importable: install the project or set PYTHONPATH).",
    )
    inputs.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs unpickling arbitrary Python objects, e.g. custom classes in its "
        "hyper-parameters. Loading such a file can run code from it: only for checkpoints you trust. "
        "By default only weights and plain types are loaded.",
    )
    inputs.add_argument(
        "--probe", required=True, metavar="DIR", help="folder of probe images (png/jpg/...), e.g. probes/images."
    )
    inputs.add_argument(
        "--masks",
        metavar="DIR",
        help="folder of region-of-interest masks with the probes' file names, nonzero = ROI, e.g. probes/rulers. "
        "Probes without a mask are audited but not scored.",
    )
    inputs.add_argument(
        "--labels", metavar="FILE.csv", help="CSV of 'filename,label' rows (true classes), e.g. probes/labels.csv."
    )
    inputs.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, used in the report and in --labels, e.g. benign,malignant.",
    )
    preprocessing = audit.add_argument_group("preprocessing")
    preprocessing.add_argument(
        "--image-size",
        type=_positive_int,
        default=224,
        metavar="N",
        help="images (and masks) are resized to N x N pixels, e.g. --image-size 224 (default: 224).",
    )
    preprocessing.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=3,
        help="input channels the model expects: 3 (RGB, default) or 1 (grey), e.g. --channels 1.",
    )
    preprocessing.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="per-channel mean for normalisation, e.g. --mean 0.485 0.456 0.406 (default: none, inputs in [0, 1]).",
    )
    preprocessing.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="per-channel standard deviation, e.g. --std 0.229 0.224 0.225 (default: none).",
    )
    audit_options = audit.add_argument_group("audit")
    audit_options.add_argument(
        "--methods",
        default="sas,gradcam",
        metavar="NAMES",
        help="comma-separated attribution methods, e.g. --methods gradcam (default: sas,gradcam).",
    )
    audit_options.add_argument(
        "--sas-iterations",
        type=_positive_int,
        default=100,
        metavar="N",
        help="optimisation steps of SaS; fewer is faster and coarser, e.g. --sas-iterations 20 (default: 100).",
    )
    audit_options.add_argument(
        "--gradcam-layer",
        metavar="NAME",
        help="module name of the layer Grad-CAM explains, e.g. --gradcam-layer model.layer4 "
        "(default: found automatically, the last spatial feature map).",
    )
    audit_options.add_argument(
        "--target",
        choices=("pred", "label"),
        default="pred",
        help="class to explain: the model's prediction (pred, default) or the true label from --labels "
        "(label; every probe needs one), e.g. --target label.",
    )
    audit_options.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run: auto (the GPU when there is one, default), cpu or cuda, e.g. --device cpu.",
    )
    audit_options.add_argument(
        "--shortcut-threshold",
        type=_unit_float,
        default=0.5,
        metavar="T",
        help="exit 1 when a method's mean roi_share over the probes with a mask is above T, "
        "e.g. --shortcut-threshold 0.5 (default: 0.5; chance level is the masks' area share).",
    )
    outputs = audit.add_argument_group("outputs")
    outputs.add_argument(
        "--baseline",
        metavar="SUMMARY.json",
        help="summary.json of a previous audit: report per-probe and mean changes against it, "
        "e.g. --baseline audits/2024-05-01/summary.json.",
    )
    outputs.add_argument(
        "--baseline-tolerance",
        type=_unit_float,
        default=0.05,
        metavar="D",
        help="roi_share changes larger than D against --baseline are flagged in the report, "
        "e.g. --baseline-tolerance 0.1 (default: 0.05). Flags do not change the exit status.",
    )
    outputs.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; use a fresh one per audit), e.g. audits/2024-05-02.",
    )
    return parser


# ----------------------------------------------------------------------------- inputs


def _check_inputs(args: argparse.Namespace) -> None:
    """Path checks that need no heavy import."""
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file.")
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", args.model):
        raise UsageError(f"--model must be 'package.module:ClassName', got {args.model!r}.")
    for option, value in (("--probe", args.probe), ("--masks", args.masks)):
        if value is not None and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: no such folder.")
    for option, value in (("--labels", args.labels), ("--baseline", args.baseline)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{option} {value}: no such file.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder.")


def read_labels(path: Path, class_names: Sequence[str] | None) -> dict[str, int]:
    """``{file name: class index}`` from a ``filename,label`` CSV.

    Raises:
        UsageError: For a malformed row or a label that is neither an index nor a class name.
    """
    labels: dict[str, int] = {}
    names = {name: index for index, name in enumerate(class_names or [])}
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"--labels {path}: cannot be read ({error}).") from None
    for line, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2:
            raise UsageError(f"--labels {path} line {line}: expected 'filename,label', got {','.join(row)!r}.")
        file_name, label = cells[0], cells[1]
        if line == 1 and file_name.lower() in ("filename", "file", "name", "image") and label not in names:
            continue
        if label in names:
            labels[file_name] = names[label]
        elif re.fullmatch(r"-?\d+", label):
            labels[file_name] = int(label)
        else:
            known = f" or one of --class-names {','.join(class_names)}" if class_names else ""
            raise UsageError(
                f"--labels {path} line {line}: label {label!r} must be a class index{known}."
            )
    return labels


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _mask_file(masks: Path, image_name: str) -> Path | None:
    exact = masks / image_name
    if exact.is_file():
        return exact
    stem = Path(image_name).stem
    for extension in IMAGE_EXTENSIONS:
        for candidate in (masks / f"{stem}{extension}", masks / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _decode(data: bytes) -> np.ndarray | None:
    import cv2
    import numpy as np

    if not data:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


def _to_unit_range(pixels: np.ndarray) -> np.ndarray:
    import numpy as np

    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {pixels.dtype}")


def prepare_image(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Decoded pixels (OpenCV's BGR/BGRA/grey) as ``[size, size, channels]`` float32 RGB/grey in [0, 1]."""
    import cv2
    import numpy as np

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
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return np.ascontiguousarray(image, dtype=np.float32)


def prepare_mask(pixels: np.ndarray, size: int) -> np.ndarray:
    """Decoded mask pixels as ``[size, size]`` bool (nonzero in any colour channel = ROI; nearest resize)."""
    import cv2
    import numpy as np

    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=2) if pixels.shape[2] >= 3 else pixels[..., 0]
    nonzero = (pixels != 0).astype(np.uint8)
    return cv2.resize(nonzero, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def read_probe_folder(
    probe_dir: Path,
    masks_dir: Path | None,
    labels: dict[str, int],
    *,
    size: int,
    channels: int,
) -> ProbeFolder:
    """Read, convert and resize every probe image (and its mask); undecodable files are skipped.

    Raises:
        UsageError: If the folder holds no image file, or none that can be read.
    """
    import numpy as np

    from lightning_sas.report import SkippedFile

    files = _image_files(probe_dir)
    if not files:
        raise UsageError(f"--probe {probe_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    folder = ProbeFolder()
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            folder.skipped.append(SkippedFile(path.name, f"cannot be read: {error.strerror or error}"))
            continue
        pixels = _decode(data)
        if pixels is None or pixels.size == 0:
            reason = "empty file" if not data else "not a decodable image (corrupt or unsupported format)"
            folder.skipped.append(SkippedFile(path.name, reason))
            continue
        try:
            image = prepare_image(pixels, size, channels)
        except (ValueError, OSError) as error:
            folder.skipped.append(SkippedFile(path.name, f"cannot be converted: {error}"))
            continue
        mask_path = _mask_file(masks_dir, path.name) if masks_dir is not None else None
        try:
            mask = _read_mask(mask_path, size) if mask_path is not None else np.zeros((size, size), dtype=bool)
        except ValueError as error:
            folder.skipped.append(SkippedFile(path.name, str(error)))
            continue
        folder.names.append(path.name)
        folder.images.append(image)
        folder.masks.append(mask)
        folder.labels.append(labels.get(path.name, -1))
        folder.file_hashes.append(hashlib.sha256(data).hexdigest())
    if not folder.names:
        reasons = "; ".join(f"{item.file}: {item.reason}" for item in folder.skipped)
        raise UsageError(f"--probe {probe_dir}: no readable image ({reasons}).")
    return folder


def _read_mask(path: Path, size: int) -> np.ndarray:
    """The mask file as ``[size, size]`` bool.

    Raises:
        ValueError: If it cannot be read or decoded (the message names the mask).
    """
    try:
        pixels = _decode(path.read_bytes())
    except OSError as error:
        raise ValueError(f"its mask {path.name} cannot be read: {error.strerror or error}") from None
    if pixels is None or pixels.size == 0:
        raise ValueError(f"its mask {path.name} is not a decodable image")
    return prepare_mask(pixels, size)


def to_probes(folder: ProbeFolder, mean: Sequence[float], std: Sequence[float], device: torch.device) -> Probes:
    """The folder's images as normalised :class:`~lightning_sas.probes.Probes` on ``device``."""
    import numpy as np
    import torch

    from lightning_sas.probes import Probes

    images = torch.from_numpy(np.stack(folder.images)).permute(0, 3, 1, 2).contiguous()
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return Probes(
        images=((images - mean_tensor) / std_tensor).to(device),
        labels=torch.tensor(folder.labels, dtype=torch.long).to(device),
        roi=torch.from_numpy(np.stack(folder.masks)).to(device),
        names=list(folder.names),
        indices=[-1] * len(folder.names),
    )


def _normalisation(
    mean: list[float] | None, std: list[float] | None, channels: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (one value is repeated; none means 0 and 1)."""
    resolved = []
    for option, values, default in (("--mean", mean, 0.0), ("--std", std, 1.0)):
        if values is None:
            values = [default]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise UsageError(f"{option} needs 1 or {channels} values (one per channel), got {len(values)}.")
        resolved.append(values)
    if any(value <= 0 for value in resolved[1]):
        raise UsageError(f"--std values must be positive, got {resolved[1]}.")
    return resolved[0], resolved[1]


# ----------------------------------------------------------------------------- model


def import_model_class(spec: str) -> type[LightningModule]:
    """The LightningModule subclass named by ``package.module:ClassName``.

    Raises:
        UsageError: If the module cannot be imported, has no such class, or it is no LightningModule.
    """
    from lightning.pytorch import LightningModule

    module_name, _, class_path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"--model {spec}: cannot import module {module_name!r} ({error}); install your project or set PYTHONPATH."
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure while importing user code is an input problem
        raise UsageError(f"--model {spec}: importing {module_name!r} failed: {type(error).__name__}: {error}") from None
    target: Any = module
    for part in class_path.split("."):
        if not hasattr(target, part):
            raise UsageError(f"--model {spec}: module {module_name!r} has no attribute {class_path!r}.")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, LightningModule)):
        raise UsageError(f"--model {spec}: {class_path} is not a LightningModule subclass.")
    return target


def _unpickling_detail(message: str) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"it holds {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return found.group(1).strip() if found else "objects other than tensors and plain types"


def load_model(
    model_class: type[LightningModule], checkpoint: Path, device: torch.device, *, trust: bool
) -> LightningModule:
    """Load ``checkpoint`` with Lightning's ``load_from_checkpoint``, weights only unless ``trust``.

    Raises:
        UsageError: If the checkpoint needs unpickling (without ``trust``) or cannot be loaded.
    """
    import pickle

    try:
        model = model_class.load_from_checkpoint(checkpoint, map_location=device, weights_only=not trust)
    except pickle.UnpicklingError as error:
        message = str(error)
        if not trust and "Weights only load failed" in message and zipfile.is_zipfile(checkpoint):
            raise UsageError(
                f"checkpoint {checkpoint} needs unpickling arbitrary Python objects ({_unpickling_detail(message)}); "
                "loading it could run code from the file. If you trust its origin, re-run with --trust-checkpoint."
            ) from None
        raise UsageError(
            f"checkpoint {checkpoint} is not a readable PyTorch checkpoint ({_first_line(message)})."
        ) from None
    except Exception as error:  # noqa: BLE001 - corrupt files and mismatched classes fail in many ways
        raise UsageError(
            f"checkpoint {checkpoint} cannot be loaded into {model_class.__name__}: "
            f"{type(error).__name__}: {_first_line(str(error))}"
        ) from None
    return model.to(device)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"


def resolve_device(choice: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU.

    Raises:
        UsageError: If ``cuda`` is asked for and there is none.
    """
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto).")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def build_methods(names: Sequence[str], sas_iterations: int, gradcam_layer: str | None) -> dict[str, AttributionMethod]:
    """Method objects by name, with the command line's settings for SaS and Grad-CAM.

    Raises:
        UsageError: For an unknown or repeated method name.
    """
    from lightning_sas.audit import resolve_methods
    from lightning_sas.methods import GradCAM, SaS

    factories: dict[str, Callable[[], AttributionMethod]] = {
        "sas": lambda: SaS(iterations=sas_iterations),
        "gradcam": lambda: GradCAM(target_layer=gradcam_layer),
    }
    try:
        return resolve_methods([factories[name]() if name in factories else name for name in names])
    except (ValueError, TypeError) as error:
        raise UsageError(f"--methods: {error}") from None


# ----------------------------------------------------------------------------- audit


@contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """A tqdm bar on stderr (shown when stderr is a terminal); yields ``advance(next_stage)``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), unit="step", leave=False)
    bar.set_description("loading")

    def advance(stage: str) -> None:
        bar.update(1)
        bar.set_description(stage)

    try:
        yield advance
    finally:
        bar.close()


def audit_each_method(
    model: LightningModule,
    probes: Probes,
    methods: dict[str, AttributionMethod],
    target: str,
    advance: Callable[[str], None],
) -> AuditResult:
    """:func:`~lightning_sas.audit.run_audit`, advancing the progress bar before each method."""
    from lightning_sas.audit import run_audit

    return run_audit(model, probes, methods, target=target, progress=lambda name: advance(f"explaining ({name})"))  # type: ignore[arg-type]


def write_tensorboard(
    out: Path, pictures: dict[str, np.ndarray], scalars: dict[str, float], texts: dict[str, str]
) -> None:
    """TensorBoard events directly in ``out`` with the callback's tags at step 0, flushed and closed."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sas.audit_logging import write_pictures, write_text

    logger = TensorBoardLogger(save_dir=str(out), name="", version="", default_hp_metric=False)
    try:
        write_pictures([logger], pictures, step=0)
        for tag, text in texts.items():
            write_text([logger], tag, text, step=0)
        logger.log_metrics(scalars, step=0)
    finally:
        logger.experiment.flush()
        logger.experiment.close()


def _texts(summary: dict[str, Any]) -> dict[str, str]:
    """The callback's text tags: ``audit/manifest`` always, ``audit/alert`` when a threshold is crossed."""
    from lightning_sas.audit_logging import manifest_markdown

    texts = {"audit/manifest": manifest_markdown(summary["manifest"])}
    if summary["crossed"]:
        texts["audit/alert"] = _verdict(summary)
    return texts


def _verdict(summary: dict[str, Any]) -> str:
    threshold = summary["threshold"]
    if not summary["threshold_checked"]:
        return f"no probe has a mask: nothing to check against the shortcut threshold {threshold:g}"
    if not summary["crossed"]:
        return f"no shortcut threshold crossed (every mean roi_share <= {threshold:g})"
    parts = []
    for name, shortcut in summary["shortcuts"].items():
        top = ", ".join(f"{item['file']} {item['roi_share']:.3f}" for item in shortcut["top_probes"])
        parts.append(f"{name} mean roi_share {shortcut['roi_share']:.3f} > {threshold:g} (highest: {top})")
    return "SHORTCUT threshold crossed: " + "; ".join(parts)


@dataclass
class AuditInputs:
    """Everything read from the command line and the disk before the model is loaded."""

    class_names: list[str] | None
    method_names: list[str]
    mean: list[float]
    std: list[float]
    folder: ProbeFolder
    baseline: dict[str, Any] | None


def read_inputs(args: argparse.Namespace) -> AuditInputs:
    """Check the options and read labels, baseline and probe images (no model needed yet).

    Raises:
        UsageError: For any usage or input problem.
    """
    from lightning_sas.report import load_summary

    _check_inputs(args)
    class_names = _name_list(args.class_names)
    method_names = _name_list(args.methods) or []
    if not method_names:
        raise UsageError("--methods needs at least one method name, e.g. --methods sas,gradcam.")
    mean, std = _normalisation(_float_list(args.mean, "--mean"), _float_list(args.std, "--std"), args.channels)
    labels = read_labels(Path(args.labels), class_names) if args.labels else {}
    baseline = None
    if args.baseline:
        try:
            baseline = load_summary(args.baseline)
        except (ValueError, OSError) as error:
            raise UsageError(f"--baseline: {error}") from None
    folder = read_probe_folder(
        Path(args.probe),
        Path(args.masks) if args.masks else None,
        labels,
        size=args.image_size,
        channels=args.channels,
    )
    unmatched = sorted(set(labels) - set(folder.names) - {item.file for item in folder.skipped})
    if unmatched:
        print(
            f"{PROGRAM}: warning: --labels names {len(unmatched)} file(s) not in --probe, e.g. {unmatched[0]}",
            file=sys.stderr,
        )
    if args.target == "label" and any(label < 0 for label in folder.labels):
        missing = [name for name, label in zip(folder.names, folder.labels, strict=True) if label < 0]
        raise UsageError(f"--target label needs a label for every probe; none for {', '.join(missing[:3])}.")
    return AuditInputs(class_names, method_names, mean, std, folder, baseline)


def _run_record(args: argparse.Namespace, inputs: AuditInputs, device: torch.device, command: list[str]) -> dict:
    """What identifies this run in ``summary.json``: versions, command line, inputs, settings."""
    import lightning
    import torch

    import lightning_sas

    return {
        "lightning_sas": lightning_sas.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "command": command,
        "checkpoint": str(args.checkpoint),
        "model": args.model,
        "device": str(device),
        "image_size": args.image_size,
        "channels": args.channels,
        "mean": inputs.mean,
        "std": inputs.std,
        "target": args.target,
    }


def run_audit_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas audit``; returns the exit status (0 or 1; input errors raise).

    Raises:
        UsageError: For any usage or input problem.
    """
    inputs = read_inputs(args)

    from lightning_sas import report
    from lightning_sas.audit_logging import audit_scalars, render_audit

    model_class = import_model_class(args.model)
    methods = build_methods(inputs.method_names, args.sas_iterations, args.gradcam_layer)
    device = resolve_device(args.device)
    out = Path(args.out)
    with _progress(total=len(methods) + 4) as advance:
        model = load_model(model_class, Path(args.checkpoint), device, trust=args.trust_checkpoint)
        advance("reading probes")
        probes = to_probes(inputs.folder, inputs.mean, inputs.std, device)
        try:
            result = audit_each_method(model, probes, methods, args.target, advance)
        except (RuntimeError, ValueError, TypeError) as error:
            raise UsageError(
                f"the audit failed on the probe images ({type(error).__name__}: {_first_line(str(error))}); "
                "check --image-size, --channels, --mean/--std and --gradcam-layer against the model."
            ) from None
        advance("rendering")
        summary = report.build_summary(
            result,
            probes,
            skipped=inputs.folder.skipped,
            file_hashes=inputs.folder.file_hashes,
            threshold=args.shortcut_threshold,
            class_names=inputs.class_names,
            run=_run_record(args, inputs, device, command),
        )
        if inputs.baseline is not None:
            summary["baseline"] = report.compare_with_baseline(
                summary, inputs.baseline, baseline_path=str(args.baseline), tolerance=args.baseline_tolerance
            )
        display = {"mean": inputs.mean, "std": inputs.std}
        pictures = render_audit(
            result, probes, **display, class_names=inputs.class_names, title=Path(args.checkpoint).name
        )
        html_pictures = report.probe_pictures(result, probes, **display)
        advance("writing")
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_tensorboard(out, pictures, audit_scalars(result), _texts(summary))
            report.write_summary(summary, out / "summary.json")
            report.write_report(summary, html_pictures, out / "report.html")
        except OSError as error:
            raise UsageError(f"--out {args.out}: cannot write ({error.strerror or error}).") from None
        advance("done")

    _print_summary(summary, out)
    return EXIT_SHORTCUT if summary["crossed"] else EXIT_OK


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print(
        f"{PROGRAM}: audited {len(summary['probes'])} probe(s) with {', '.join(summary['methods'])} "
        f"in {summary['seconds']:.1f} s ({len(summary['skipped'])} skipped)"
    )
    for item in summary["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    for name, means in summary["methods"].items():
        share = "–" if means["roi_share"] is None else f"{means['roi_share']:.3f}"
        mass = "–" if means["roi_mass"] is None else f"{means['roi_mass']:.3f}"
        print(f"  {name}: mean roi_share {share}, roi_mass {mass} ({means['probes_with_mask']} probe(s) with a mask)")
    baseline = summary.get("baseline")
    if baseline:
        print(
            f"  against {baseline['file']}: {len(baseline['flagged_probes'])} probe(s) flagged, "
            f"methods with a changed mean: {', '.join(baseline['flagged_methods']) or 'none'}"
        )
    print(f"{PROGRAM}: {_verdict(summary)}")
    print(f"report: {out / 'report.html'}")


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 shortcut threshold crossed, 2 error).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_request:  # --help (0) and argparse's usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run_audit_command(args, [PROGRAM, *arguments])
    except UsageError as error:
        message = " ".join(str(error).split())
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
