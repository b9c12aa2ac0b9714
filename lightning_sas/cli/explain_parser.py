"""The options of ``lightning-sas explain``: the images, the model source, preprocessing, methods, outputs."""

from __future__ import annotations

import argparse

from lightning_sas.cli.options import add_channels_argument, add_method_arguments, device_spec, positive_int
from lightning_sas.probes.images import IMAGE_EXTENSIONS

__all__ = ["DEFAULT_OUT", "EXPLAIN_EPILOG", "IMAGENET_MEAN", "IMAGENET_STD", "add_explain_parser"]

#: The normalisation torchvision's and timm's ImageNet models expect: the default of --mean / --std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Where the maps go without --out.
DEFAULT_OUT = "explanations"

EXPLAIN_EPILOG = f"""\
examples:
  # a torchvision architecture with your weights (a state_dict saved with torch.save)
  lightning-sas explain cat.jpg dog.png --arch torchvision:resnet50 --weights resnet50.pth

  # a timm model trained for 5 classes, explaining the class 'melanoma' whatever it predicts
  lightning-sas explain lesion.png --arch timm:convnext_tiny --weights best.pth --num-classes 5 \\
      --class-names nevus,melanoma,bcc,ak,bkl --target melanoma

  # a TorchScript or torch.export file, cheap methods, on the CPU
  lightning-sas explain xray.png --model-file model.pt2 --methods saliency --channels 1 --device cpu

  # a Lightning checkpoint, a quick SaS
  lightning-sas explain probe.png --checkpoint last.ckpt --model my_project.models:LesionClassifier \\
      --method-config sas.iterations=30 --image-size 192x256 --mean 0.5 --std 0.25

outputs, per image (IMAGE's file name without its extension: two images with the same
name are refused) and method (sas, gradcam, ...):
  <out>/<image>/<method>.png          the map in grey, 8-bit, at the image's own size
  <out>/<image>/<method>_overlay.jpg  the map coloured (jet) over the image, at its own size
  <out>/<image>/<method>.npy          the map as the method returned it, float32 [H, W] at --image-size
Images: {", ".join(extension[1:] for extension in IMAGE_EXTENSIONS)}. One line per image on stdout: the
predicted class, its softmax confidence and the files written.

exit status:
  0  every map was written
  2  a usage or input error (one line on stderr, nothing written), or a method failed: a
     warning line per failed method, the other methods' files are written (Grad-CAM needs a
     layer's output, which TorchScript and torch.export models do not expose)
"""


def add_explain_parser(commands: argparse._SubParsersAction) -> None:
    """The ``explain`` subcommand: images, the model (one source), preprocessing, methods and outputs."""
    explain = commands.add_parser(
        "explain",
        help="explain images with any classifier: a map per image and method (SaS, Grad-CAM, ...)",
        description=(
            "Explain why a classifier predicts what it does on each IMAGE: one attribution map per\n"
            "image and method, as a grey PNG and a colour overlay at the image's size and as raw\n"
            "numbers (.npy). The model comes from exactly one of --arch (torchvision or timm, with\n"
            "--weights), --model-file (TorchScript or torch.export) or --checkpoint with --model.\n"
            "Give the images first (or after --): --image-size, --mean and --std take several values."
        ),
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain, e.g. cat.jpg dog.png.")
    model = explain.add_argument_group("model (give one source)")
    _add_model_options(model)
    _add_checkpoint_options(model)
    _add_preprocessing_options(explain.add_argument_group("preprocessing"))
    _add_method_options(explain.add_argument_group("explanation"))
    outputs = explain.add_argument_group("outputs")
    outputs.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output folder, one sub-folder per image, e.g. --out maps (default: {DEFAULT_OUT}).",
    )
    outputs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files a previous run wrote there (without it, existing files are refused before any work).",
    )


def _add_model_options(group: argparse._ArgumentGroup) -> None:
    """The ``--arch`` and ``--model-file`` sources and the options of ``--arch``."""
    group.add_argument(
        "--arch",
        metavar="LIBRARY:NAME",
        help="an architecture of torchvision or timm, built without downloading anything, e.g. "
        "--arch torchvision:resnet50 or --arch timm:convnext_tiny; needs --weights.",
    )
    group.add_argument(
        "--weights",
        metavar="FILE",
        help="with --arch: its state_dict, saved with torch.save (also a dict holding it under 'state_dict' or "
        "'model') or a safetensors file, e.g. --weights best.pth.",
    )
    group.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="N",
        help="with --arch: classes of the head the weights were trained with, e.g. --num-classes 5 "
        "(default: the library's, 1000).",
    )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="with --arch: explain the untrained architecture, without --weights (the maps mean nothing; "
        "for trying the command).",
    )
    group.add_argument(
        "--model-file",
        metavar="FILE",
        help="a TorchScript (torch.jit.save) or torch.export (torch.export.save, exported with a dynamic batch "
        "dimension) file, recognised by its content, e.g. --model-file model.pt2.",
    )


def _add_checkpoint_options(group: argparse._ArgumentGroup) -> None:
    """The Lightning checkpoint source, trusting a file, and where the logits are in the output."""
    group.add_argument(
        "--checkpoint",
        metavar="FILE.ckpt",
        help="a Lightning checkpoint (Trainer.save_checkpoint), with --model, e.g. --checkpoint runs/last.ckpt.",
    )
    group.add_argument(
        "--model",
        metavar="MODULE:CLASS",
        help="with --checkpoint: its LightningModule class, e.g. --model my_project.models:LesionClassifier.",
    )
    group.add_argument(
        "--init-args",
        action="append",
        default=[],
        metavar="ARGS",
        help="with --checkpoint: a constructor argument the checkpoint lacks, key=value, repeatable, "
        "e.g. --init-args num_classes=3.",
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a --checkpoint or --weights file that needs unpickling arbitrary Python objects (loading "
        "such a file can run code from it: only for files you trust).",
    )
    group.add_argument(
        "--output",
        metavar="SPEC",
        help="where the logits are in the model's output, for tuple, list or dict outputs: an index, a key or "
        "module:function, e.g. --output logits (not needed for [B, C] logits or one binary logit).",
    )


def _add_preprocessing_options(group: argparse._ArgumentGroup) -> None:
    """How images become model inputs: size, channels, normalisation."""
    group.add_argument(
        "--image-size",
        nargs="+",
        metavar="N",
        help="the model's input size: N x N, or H x W given as 'H W' or HxW, e.g. --image-size 192x256 "
        "(default: 224, or the size a torch.export file was exported for). Maps go back to each image's size.",
    )
    add_channels_argument(group)
    group.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="normalisation mean, one value or one per channel, e.g. --mean 0.5 (default: ImageNet's "
        f"{' '.join(map(str, IMAGENET_MEAN))}; with --channels 1 their average 0.449). --mean 0 --std 1 "
        "for models that take pixels in [0, 1].",
    )
    group.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="normalisation standard deviation, one value or one per channel, e.g. --std 0.25 (default: "
        f"ImageNet's {' '.join(map(str, IMAGENET_STD))}; with --channels 1 their average 0.226).",
    )


def _add_method_options(group: argparse._ArgumentGroup) -> None:
    """The methods, their settings, the class explained, the class names and the device."""
    add_method_arguments(group, example="saliency,gradcam")
    group.add_argument(
        "--target",
        default="pred",
        metavar="pred|INDEX|NAME",
        help="the class explained: the model's prediction (pred, default), a class index or a name from "
        "--class-names, e.g. --target 3 or --target melanoma.",
    )
    group.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, one per class of the model, used in the printed lines "
        "and by --target, e.g. --class-names benign,malignant.",
    )
    group.add_argument(
        "--device",
        type=device_spec,
        default="auto",
        metavar="DEVICE",
        help="where to run: auto (the GPU when there is one, default), cpu, cuda, cuda:N or mps, e.g. --device cuda:1.",
    )
