"""``lightning-sas explain``: explain images with any classifier, a map per image and method.

:func:`run_explain_command` checks the options and reads every image first
(:mod:`~lightning_sas.cli.explain_inputs`: an unreadable image, two images with the same name or
files already in ``--out`` fail before the model is loaded), loads the model
(:mod:`~lightning_sas.cli.classifier_sources`), explains all images in one batch with
:func:`lightning_sas.audit.run.explain`, and writes per image and method a grey PNG and a colour
overlay at the image's own size and the raw map as ``.npy``.

A method that fails (Grad-CAM on a TorchScript model: no forward hooks) is a warning line; the
other methods' files are still written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_sas.cli.classifier_sources import Classifier, check_model_source, load_classifier
from lightning_sas.cli.errors import EXIT_ERROR, EXIT_OK, PROGRAM, UsageError, one_line, stage
from lightning_sas.cli.explain_inputs import MAP_FILES, ExplainInputs, read_inputs
from lightning_sas.cli.methods import build_methods
from lightning_sas.cli.model_setup import check_gradcam_layer, check_model_output, resolve_device, resolve_output

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lightning_sas.audit.result import AuditResult
    from lightning_sas.methods import AttributionMethod
    from lightning_sas.runtime.outputs import OutputSelector

__all__ = ["DEFAULT_IMAGE_SIZE", "run_explain_command"]

#: The model's input side without --image-size (and without a torch.export file that fixes it).
DEFAULT_IMAGE_SIZE = 224
#: Why Grad-CAM fails on TorchScript and torch.export models, added to its warning.
NO_HOOKS_HINT = (
    "Grad-CAM reads a layer's output through a forward hook, which TorchScript and torch.export models do "
    "not run; use other --methods (e.g. saliency,sas) or load the model with --arch or --checkpoint"
)


def run_explain_command(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``lightning-sas explain``; returns the exit status (0, or 2 when a method failed).

    Raises:
        UsageError: For any usage or input problem (nothing is written then).
        StepFailure: For an unexpected exception, naming the step it happened in.
    """
    source = check_model_source(args)
    inputs = read_inputs(args)
    methods = build_methods(inputs.method_names, method_config=args.method_config)
    output = resolve_output(args.output)
    device = resolve_device(args.device)
    classifier = load_classifier(args, source, device)
    check_gradcam_layer(classifier.model, methods, None)
    size = _input_size(args, inputs.image_size, classifier)
    with stage("preparing the images"):
        images = _model_inputs(inputs, size, args.channels, device)
    num_classes = check_model_output(classifier.model, images, output, args.output)
    _check_classes(args, inputs, num_classes)
    with stage(f"explaining the images with {', '.join(methods)}"):
        result = _explain(classifier, images, methods, inputs.target, output)
    failed = _warn_failures(result.errors, methods, classifier.kind)
    with stage(f"writing the maps to --out {args.out}"):
        written = _write_all(inputs, result, [name for name in methods if name not in failed])
    _print_lines(inputs, result, written)
    if failed:
        done = "nothing was written" if len(failed) == len(methods) else "the other methods' files are written"
        print(
            f"{PROGRAM}: error: {len(failed)} of {len(methods)} methods failed ({', '.join(failed)}); {done}.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _input_size(args: argparse.Namespace, given: tuple[int, int] | None, classifier: Classifier) -> tuple[int, int]:
    """The model's input size: ``--image-size``, else the one a ``torch.export`` file fixes, else 224.

    Raises:
        UsageError: If a ``torch.export`` file fixes the batch size, or a channel count or size
            that the options contradict.
    """
    shape = classifier.input_shape
    if shape is None:
        return given or (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    exported = "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"
    where = f"--model-file {args.model_file} was exported for inputs {exported}"
    if len(shape) != 4:
        raise UsageError(f"{where}, not an image batch [B, C, H, W].")
    batch, channels, height, width = shape
    if batch is not None:
        raise UsageError(
            f"{where}, a fixed batch of {batch}; the methods pass batches of other sizes: export it with a dynamic "
            "batch, torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))."
        )
    if channels is not None and channels != args.channels:
        raise UsageError(f"--channels {args.channels}: {where}; pass --channels {channels}.")
    fixed = (height or DEFAULT_IMAGE_SIZE, width or DEFAULT_IMAGE_SIZE)
    if given is None:
        return fixed
    if any(size is not None and size != wanted for size, wanted in zip((height, width), given, strict=True)):
        raise UsageError(
            f"--image-size {given[0]}x{given[1]}: {where}; pass --image-size {fixed[0]}x{fixed[1]} or leave it out."
        )
    return given


def _model_inputs(inputs: ExplainInputs, size: tuple[int, int], channels: int, device: torch.device) -> torch.Tensor:
    """The images resized to ``size`` and normalised, ``[N, channels, H, W]`` float32 on ``device``."""
    import numpy as np
    import torch

    from lightning_sas.probes.images import prepare_image

    batch = np.stack([prepare_image(pixels, size, channels) for pixels in inputs.pixels])
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    mean = torch.tensor(inputs.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(inputs.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images - mean) / std).to(device)


def _check_classes(args: argparse.Namespace, inputs: ExplainInputs, num_classes: int) -> None:
    """``--class-names`` and ``--target`` against the model's number of classes.

    Raises:
        UsageError: If there is not one name per class, or the target class is not one of the model's.
    """
    if inputs.class_names is not None and len(inputs.class_names) != num_classes:
        raise UsageError(
            f"--class-names gives {len(inputs.class_names)} names, but the model has {num_classes} classes; "
            "give one name per class, in index order."
        )
    if inputs.target is not None and inputs.target >= num_classes:
        raise UsageError(
            f"--target {args.target}: class {inputs.target} is not a class of the model, which has {num_classes} "
            f"classes (0..{num_classes - 1})."
        )


def _explain(
    classifier: Classifier,
    images: torch.Tensor,
    methods: dict[str, AttributionMethod],
    target: int | None,
    output: OutputSelector,
) -> AuditResult:
    """Every image explained by every method in one batch (a failing method is recorded, not raised)."""
    import torch

    from lightning_sas.audit.run import explain
    from lightning_sas.probes.probe_set import Probes

    count, device = images.shape[0], images.device
    # A class to explain is the probes' "label": explain() explains the labels with target="label".
    labels = torch.full((count,), -1 if target is None else target, dtype=torch.long, device=device)
    roi = torch.zeros(count, *images.shape[2:], dtype=torch.bool, device=device)
    probes = Probes(images=images, labels=labels, roi=roi, names=[str(number) for number in range(count)])
    return explain(classifier.model, probes, methods, target="pred" if target is None else "label", output=output)


def _warn_failures(errors: dict[str, str], methods: dict[str, AttributionMethod], kind: str) -> list[str]:
    """A warning line per failed method (why Grad-CAM cannot run on a scripted or exported model); their names."""
    failed = [name for name in methods if name in errors]
    for name in failed:
        hint = f" ({NO_HOOKS_HINT})" if name == "gradcam" and kind != "eager" else ""
        print(
            f"{PROGRAM}: warning: {name} failed, its files are not written: {one_line(errors[name])}{hint}",
            file=sys.stderr,
        )
    return failed


def _write_all(inputs: ExplainInputs, result: AuditResult, names: list[str]) -> list[list[Path]]:
    """The files of every image and method ``names``; the paths written, per image.

    Raises:
        UsageError: If a file cannot be written.
    """
    from lightning_sas.probes.images import prepare_image

    written = []
    for number, (path, pixels) in enumerate(zip(inputs.paths, inputs.pixels, strict=True)):
        folder = inputs.out / path.stem
        original = prepare_image(pixels, pixels.shape[:2], 3)  # RGB in [0, 1] at the image's own size
        maps = {name: result.maps[name][number] for name in names}
        for name in names:
            if number in result.nonfinite.get(name, []):
                print(
                    f"{PROGRAM}: warning: {name}'s map of {path} is not finite (NaN or inf in the model's output or "
                    "gradient); its PNG is black and its overlay grey.",
                    file=sys.stderr,
                )
        try:
            written.append(_write_maps(folder, original, maps))
        except OSError as error:
            raise UsageError(f"--out {inputs.out}: cannot write {folder} ({error.strerror or error}).") from None
    return written


def _write_maps(folder: Path, original: np.ndarray, maps: dict[str, torch.Tensor]) -> list[Path]:
    """``<method>.png``, ``<method>_overlay.jpg`` and ``<method>.npy`` of one image in ``folder``.

    Args:
        folder: The image's folder (created).
        original: The image, RGB float32 ``[H, W, 3]`` in [0, 1] at its own size.
        maps: Each method's map ``[h, w]`` at the model's input size.
    """
    import cv2
    import numpy as np
    import torch

    from lightning_sas.methods.base import minmax_normalize
    from lightning_sas.probes.export_folder import encoded_image
    from lightning_sas.report.colour import overlay, to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    height, width = original.shape[:2]
    display = torch.from_numpy(original).permute(2, 0, 1)[None]
    written = []
    for name, method_map in maps.items():
        raw = method_map.detach().to(torch.float32).cpu()
        # Resized first, then scaled to [0, 1]: the grey PNG spans 0..255 at the image's own size.
        shrink = height * width < raw.numel()
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized = cv2.resize(np.nan_to_num(raw.numpy()), (width, height), interpolation=interpolation)
        scaled = minmax_normalize(torch.from_numpy(resized)[None])[0]
        if not torch.isfinite(raw).all():
            scaled = torch.full_like(scaled, float("nan"))  # no map: black PNG, overlay() greys the image
        grey = np.round(np.nan_to_num(scaled.numpy(), nan=0.0).clip(0.0, 1.0) * 255).astype(np.uint8)
        coloured = to_uint8(overlay(display, scaled[None]))[0]
        files = [folder / f"{name}{ending}" for ending in MAP_FILES]
        files[0].write_bytes(encoded_image(grey, ".png"))
        bgr = np.ascontiguousarray(coloured[..., ::-1])
        files[1].write_bytes(encoded_image(bgr, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90)))
        np.save(files[2], raw.numpy())
        written += files
    return written


def _print_lines(inputs: ExplainInputs, result: AuditResult, written: list[list[Path]]) -> None:
    """One line per image: the predicted class (and name), its confidence, the class explained, the files."""
    names = inputs.class_names

    def label(index: int) -> str:
        return f"{index} ({names[index]})" if names is not None else str(index)

    for number, path in enumerate(inputs.paths):
        line = f"{path.name}: class {label(int(result.predictions[number]))}"
        line += f", confidence {float(result.confidences[number]):.3f}"
        if inputs.target is not None:
            line += f"; explained class {label(inputs.target)}"
        files = written[number]
        line += f"; wrote {files[0].parent}/: {' '.join(file.name for file in files)}" if files else "; no map written"
        print(line)
