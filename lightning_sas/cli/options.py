"""Command-line values read: numbers, names, image sizes, and the ``argparse`` types of the options.

Parsing helpers raise :class:`~lightning_sas.cli.errors.UsageError` (reported in one line);
the ``argparse`` types raise :class:`argparse.ArgumentTypeError` (argparse's usage message).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

from lightning_sas.cli.errors import UsageError

__all__ = [
    "CommandLineWins",
    "add_channels_argument",
    "add_method_arguments",
    "at_least_two",
    "device_spec",
    "devices_count",
    "float_list",
    "name_list",
    "off_or",
    "parse_image_size",
    "positive_int",
    "unit_float",
]


def float_list(values: Sequence[str] | None, option: str) -> list[float] | None:
    """Numbers given as ``0.5 0.5 0.5`` or ``0.5,0.5,0.5``.

    Raises:
        UsageError: If a value is not a number.

    Example:
        >>> float_list(["0.5,0.25", "1"], "--mean")
        [0.5, 0.25, 1.0]
    """
    if values is None:
        return None
    parts = [part for value in values for part in value.replace(",", " ").split()]
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise UsageError(
            f"{option} takes numbers (e.g. {option} 0.485 0.456 0.406), got {' '.join(values)!r}."
        ) from None


def name_list(text: str | None) -> list[str] | None:
    """Comma-separated names, blanks dropped (``None`` stays ``None``).

    Example:
        >>> name_list("benign, malignant,")
        ['benign', 'malignant']
    """
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """An ``argparse`` type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def off_or(parse: Callable[[str], float]) -> Callable[[str], float | None]:
    """An argparse type that also accepts ``off`` (the criterion switched off: ``None``)."""

    def parse_or_off(text: str) -> float | None:
        return None if text.strip().lower() in ("off", "none") else parse(text)

    parse_or_off.__name__ = parse.__name__
    return parse_or_off


def at_least_two(text: str) -> int:
    """An ``argparse`` type: an integer >= 2 (points of a curve)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def parse_image_size(values: Sequence[str]) -> tuple[int, int]:
    """``--image-size``: ``N`` (N x N), ``H W`` or ``HxW``, as ``(height, width)``.

    Raises:
        UsageError: For anything but one or two positive integers.

    Example:
        >>> parse_image_size(["224"]), parse_image_size(["96", "128"]), parse_image_size(["96x128"])
        ((224, 224), (96, 128), (96, 128))
    """
    parts = [part for value in values for part in re.split(r"[xX,\s]+", value.strip()) if part]
    if len(parts) in (1, 2) and all(re.fullmatch(r"\d+", part) and int(part) > 0 for part in parts):
        numbers = [int(part) for part in parts]
        return (numbers[0], numbers[-1])
    raise UsageError(
        f"--image-size takes N (N x N pixels), H W or HxW with positive integers "
        f"(e.g. --image-size 224 or --image-size 192x256), got {' '.join(values)!r}."
    )


def device_spec(text: str) -> str:
    """An ``argparse`` type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Example:
        >>> device_spec("cuda:1"), device_spec("CPU")
        ('cuda:1', 'cpu')
    """
    value = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps, got {text!r}")
    return value


def devices_count(text: str) -> int | str:
    """An ``argparse`` type: Fabric's ``devices``: a count (``-1``: all), ``auto``, or indices like ``0,1``.

    Example:
        >>> devices_count("2"), devices_count("-1"), devices_count("0,1"), devices_count("auto")
        (2, -1, '0,1', 'auto')
    """
    value = text.strip().lower()
    if re.fullmatch(r"-1|[1-9]\d*", value):
        return int(value)
    if value == "auto" or re.fullmatch(r"\d+(,\d+)*,?", value):
        return value
    raise argparse.ArgumentTypeError(
        f"expected a device count (e.g. 2; -1 for all), auto, or indices such as 0,1, got {text!r}"
    )


class CommandLineWins(argparse.Action):
    """A repeatable option (``append``) whose command-line values replace its default, a ``--config``
    file's, instead of adding to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        given = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*given, values])


def add_channels_argument(group: argparse._ArgumentGroup) -> None:
    """``--channels``, as every command that feeds images to a model takes it."""
    group.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=3,
        help="input channels the model expects: 3 (RGB, default) or 1 (grey), e.g. --channels 1.",
    )


def add_method_arguments(group: argparse._ArgumentGroup, example: str) -> None:
    """``--methods`` and ``--method-config``, as every command that explains takes them.

    Args:
        group: Where the options go.
        example: The ``--methods`` value shown as the example.
    """
    group.add_argument(
        "--methods",
        default="sas,gradcam",
        metavar="NAMES",
        help=f"comma-separated attribution methods, e.g. --methods {example} (default: sas,gradcam); "
        "names: sas, gradcam, saliency, smoothgrad, ig, gradientshap, occlusion, lime.",
    )
    group.add_argument(
        "--method-config",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="an option of one method, repeatable, e.g. --method-config sas.iterations=30 "
        "--method-config ig.rule=gausslegendre --method-config gradcam.target_layer=layer4 "
        "(values are Python literals, None, a torch dtype such as torch.bfloat16, or else text).",
    )
