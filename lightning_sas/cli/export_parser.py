"""The options of ``lightning-sas export-probes``: the data set, the folder, the selection, the item keys."""

from __future__ import annotations

import argparse

from lightning_sas.cli.help_texts import EXPORT_EPILOG
from lightning_sas.cli.options import positive_int


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """The ``export-probes`` subcommand: the data set, the folder and the selection of items."""
    export = commands.add_parser(
        "export-probes",
        help="write a probe folder (images, masks, labels.csv, manifest.json) from a Dataset",
        description=(
            "Write the probe folder 'lightning-sas audit' reads from a map-style Dataset returned by an\n"
            "importable callable: images as PNG (de-normalised with --mean/--std), ROI masks in masks/,\n"
            "labels.csv and manifest.json (sha256 of every file). Exits 0, or 2 on any error."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "--dataset",
        required=True,
        metavar="MODULE:CALLABLE",
        help="a callable taking no arguments that returns the Dataset, imported like --model, "
        "e.g. --dataset my_project.data:make_val_split.",
    )
    export.add_argument(
        "--out", required=True, metavar="DIR", help="the probe folder to write (new or empty), e.g. --out probes."
    )
    export.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="export N items, balanced over the classes and seeded (default: every item), e.g. --count 32.",
    )
    export.add_argument(
        "--indices",
        metavar="I,J,...",
        help="export exactly these data set indices instead of --count, e.g. --indices 3,17,42.",
    )
    export.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the --count selection, e.g. --seed 1 (default: 0)."
    )
    _add_export_item_options(export)


def _add_export_item_options(export: argparse.ArgumentParser) -> None:
    """Options of ``export-probes`` saying how items are read: normalisation, class names, item keys."""
    export.add_argument(
        "--mean",
        nargs="+",
        metavar="M",
        help="the normalisation mean of the data set's images, undone before writing (one value or one per "
        "channel), e.g. --mean 0.485 0.456 0.406 (default: none, images in [0, 1]).",
    )
    export.add_argument(
        "--std",
        nargs="+",
        metavar="S",
        help="the normalisation standard deviation, e.g. --std 0.229 0.224 0.225 (default: none).",
    )
    export.add_argument(
        "--class-names",
        metavar="NAMES",
        help="comma-separated class names by index, written in labels.csv, e.g. --class-names benign,malignant.",
    )
    for name, what, default, example in (
        ("image", "image", '"image" / 0', "--image-key pixels"),
        ("label", "label", '"label" / 1', "--label-key target"),
        ("mask", "ROI mask", '"mask", else "roi" / none: a tuple\'s mask is read only when given',
         "--mask-key 2 for (image, label, roi_mask) items, or --mask-key ruler_mask"),
    ):  # fmt: skip
        export.add_argument(
            f"--{name}-key",
            metavar="KEY|POSITION",
            help=f"where the {what} of an item is: a key of mapping items or a position in tuple items "
            f"(default: {default}), e.g. {example}.",
        )
