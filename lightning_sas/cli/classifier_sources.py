"""The classifier ``lightning-sas explain`` explains, loaded from exactly one of three sources.

* ``--arch torchvision:NAME`` / ``--arch timm:NAME`` with ``--weights FILE``: the architecture
  built without downloading anything (``weights=None`` / ``pretrained=False``, ``--num-classes``
  for the head), then a state_dict loaded into it (:func:`load_weights`);
* ``--model-file FILE``: a TorchScript archive (``torch.jit.save``) or a ``torch.export``
  archive (``torch.export.save``), told apart by the files inside the zip, not by the extension
  (:func:`model_file_kind`);
* ``--checkpoint FILE.ckpt --model MODULE:CLASS``: a Lightning checkpoint, loaded as
  ``lightning-sas audit`` loads it (:func:`~lightning_sas.cli.checkpoint.load_checkpoint`).

:func:`check_model_source` needs no heavy import, so a wrong combination of options fails at
once; :func:`load_classifier` raises :class:`~lightning_sas.cli.errors.UsageError` naming the
option, its value and what was expected. torch, torchvision and timm are imported inside the
functions that need them.
"""

from __future__ import annotations

import argparse
import difflib
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning_sas.cli.errors import UsageError, stage
from lightning_sas.cli.model_import import ModelLoadError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ARCH_LIBRARIES", "Classifier", "check_model_source", "load_classifier", "load_weights", "model_file_kind"]

#: Libraries ``--arch`` builds architectures from.
ARCH_LIBRARIES = ("torchvision", "timm")
#: Keys under which a saved dict may hold the state_dict (Lightning, common training scripts).
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
#: The options naming a model source.
SOURCE_OPTIONS = ("--arch", "--model-file", "--checkpoint")
#: The source option each model option belongs to (the sources belong to themselves).
OWNERS = {
    "--arch": "--arch",
    "--model-file": "--model-file",
    "--checkpoint": "--checkpoint",
    "--weights": "--arch",
    "--num-classes": "--arch",
    "--random-weights": "--arch",
    "--model": "--checkpoint",
    "--init-args": "--checkpoint",
}
#: How the error for no model source lists the sources.
SOURCES = "--arch LIBRARY:NAME --weights FILE, --model-file FILE or --checkpoint FILE.ckpt --model MODULE:CLASS"


@dataclass
class Classifier:
    """A loaded classifier and where it came from."""

    model: nn.Module
    #: ``"eager"`` (an ``nn.Module``), ``"torchscript"`` or ``"export"`` (no forward hooks: no Grad-CAM).
    kind: Literal["eager", "torchscript", "export"]
    #: For a ``torch.export`` archive: its input's shape, ``None`` where a dimension is dynamic.
    input_shape: tuple[int | None, ...] | None = None


def check_model_source(args: argparse.Namespace) -> str:
    """Which source the options name: ``"arch"``, ``"model-file"`` or ``"checkpoint"``.

    Raises:
        UsageError: If none or several are given, or an option belongs to another source.
    """
    given = [option for option in SOURCE_OPTIONS if _value(args, option)]
    if not given:
        raise UsageError(f"no model given; give one of {SOURCES}.")
    if len(given) > 1:
        raise UsageError(f"give one model source, not {' and '.join(given)}; the sources are {SOURCES}.")
    source = given[0]
    for option, owner in OWNERS.items():
        if owner not in (option, source) and _value(args, option):
            raise UsageError(f"{option} goes with {owner}, not with {source}.")
    if source == "--arch" and not args.weights and not args.random_weights:
        raise UsageError(
            f"--arch {args.arch} needs --weights FILE (a state_dict saved with torch.save); random weights explain "
            "nothing (pass --random-weights to explain an untrained model anyway, e.g. to try the command)."
        )
    if source == "--arch" and args.weights and args.random_weights:
        raise UsageError("give --weights FILE or --random-weights, not both.")
    if source == "--checkpoint" and not args.model:
        raise UsageError(
            f"--checkpoint {args.checkpoint} needs --model MODULE:CLASS, the LightningModule it was saved from."
        )
    return source[2:]


def _value(args: argparse.Namespace, option: str) -> Any:
    return getattr(args, option[2:].replace("-", "_"))


def load_classifier(args: argparse.Namespace, source: str, device: torch.device) -> Classifier:
    """The model of ``source`` (from :func:`check_model_source`) on ``device``, in eval mode.

    Raises:
        UsageError: For anything the options or files get wrong, naming the option and value.
        StepFailure: If user code (a model's constructor, its module at import) raises.
    """
    if source == "arch":
        return _load_arch(args, device)
    if source == "model-file":
        with stage(f"loading --model-file {args.model_file}"):
            try:
                return _load_model_file(Path(args.model_file), device)
            except ModelLoadError as error:
                raise UsageError(f"--model-file {error}") from None
    return _load_lightning(args, device)


def _load_arch(args: argparse.Namespace, device: torch.device) -> Classifier:
    """``--arch`` built (``--num-classes``), with ``--weights`` loaded unless ``--random-weights``."""
    library, _, name = args.arch.partition(":")
    if library not in ARCH_LIBRARIES or not name.strip():
        raise UsageError(
            f"--arch takes torchvision:NAME or timm:NAME (e.g. --arch torchvision:resnet50 or --arch "
            f"timm:convnext_tiny), got {args.arch!r}."
        )
    with stage(f"building --arch {args.arch}"):
        try:
            model = _build_arch(library, name.strip(), args.num_classes)
        except ModelLoadError as error:
            raise UsageError(f"--arch {args.arch}: {error}") from None
    if args.weights:
        with stage(f"loading --weights {args.weights} into {args.arch}"):
            try:
                load_weights(model, Path(args.weights), trust=args.trust_checkpoint)
            except ModelLoadError as error:
                raise UsageError(f"--weights {error}") from None
    return Classifier(model.to(device).eval(), "eager")


def _build_arch(library: str, name: str, num_classes: int | None) -> nn.Module:
    """The architecture ``name`` of ``library`` with random weights (nothing is downloaded).

    Raises:
        ModelLoadError: If ``library`` has no classification model ``name`` (with the closest names).
    """
    options = {} if num_classes is None else {"num_classes": num_classes}
    if library == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name in known:
            return torchvision.models.get_model(name, weights=None, **options)
    else:
        import timm

        known = timm.list_models()
        if timm.is_model(name):
            return timm.create_model(name, pretrained=False, **options)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"{library}'s names: {library}.list_models()."
    raise ModelLoadError(f"{library} has no classification model {name!r}; {hint}")


def load_weights(model: nn.Module, path: Path, *, trust: bool = False) -> None:
    """Load the state_dict in ``path`` into ``model``, after checking that every tensor fits.

    The file is what ``torch.save`` writes (a state_dict, or a dict holding one under
    :data:`STATE_DICT_KEYS`) or a safetensors file. Keys sharing one leading prefix that the
    model's keys lack (``module.`` of DDP, ``model.`` of a LightningModule wrapping the network)
    are stripped.

    Raises:
        ModelLoadError: For a file that cannot be read, holds no state_dict, needs unpickling
            without ``trust``, or whose tensors do not fit ``model`` (naming the first keys, and
            ``--num-classes`` when only the head's size differs). The message starts with ``path``.
    """
    expected = model.state_dict()
    state = _matching_keys(_read_state_dict(path, trust), expected)
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or mismatched:
        raise ModelLoadError(f"{path}: {_mismatch(model, state, expected, missing, unexpected, mismatched)}")
    model.load_state_dict(state, strict=False)


def _mismatch(
    model: nn.Module,
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    """Why the weights do not fit ``model``, with a ``--num-classes`` hint when only the head differs."""
    name = type(model).__name__
    parts = [f"{len(missing)} of the model's tensors are missing (e.g. {missing[0]})"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} are not in the model (e.g. {unexpected[0]})")
    if mismatched:
        key = mismatched[0]
        parts.append(f"{key} is {list(state[key].shape)} in the file, {list(expected[key].shape)} in the model")
    only_rows = all(
        state[key].dim() == expected[key].dim() >= 1 and state[key].shape[1:] == expected[key].shape[1:]
        for key in mismatched
    )
    heads = {int(state[key].shape[0]) for key in mismatched} if only_rows else set()
    if mismatched and not (missing or unexpected) and len(heads) == 1:
        # Only the classifier head differs: the weights were trained for another number of classes.
        classes, built = heads.pop(), int(expected[mismatched[0]].shape[0])
        return f"the weights are for {classes} classes, the model was built for {built}; pass --num-classes {classes}."
    return f"the weights do not fit {name} ({'; '.join(parts)}); is it the architecture they were saved from?"


def _matching_keys(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with a prefix shared by all its keys and unknown to the model stripped (``module.``, ``model.``)."""
    if not state or set(state) & set(expected):
        return state
    prefixes = {key.partition(".")[0] for key in state}
    if len(prefixes) != 1 or not all("." in key for key in state):
        return state
    stripped = {key.partition(".")[2]: value for key, value in state.items()}
    return stripped if set(stripped) & set(expected) else state


def _read_state_dict(path: Path, trust: bool) -> dict[str, Any]:
    """The state_dict in ``path``: a safetensors file, a state_dict, or a dict holding one.

    Raises:
        ModelLoadError: For a file that is none of those, or that needs unpickling without ``trust``.
    """
    import pickle

    import torch

    from lightning_sas.cli.checkpoint_file import check_checkpoint_file

    if _is_safetensors(path):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    check_checkpoint_file(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        from lightning_sas.cli.checkpoint import _unpickling_error

        raise _unpickling_error(str(error), path, trust=trust, trust_hint="re-run with --trust-checkpoint") from None
    except (RuntimeError, EOFError) as error:
        raise ModelLoadError(f"{path} is a damaged PyTorch file ({first_line(str(error))[:160]}).") from None
    if isinstance(saved, torch.nn.Module):
        return saved.state_dict()
    if isinstance(saved, Mapping):
        inner = next((saved[key] for key in STATE_DICT_KEYS if isinstance(saved.get(key), Mapping)), saved)
        if inner and all(isinstance(value, torch.Tensor) for value in inner.values()):
            return dict(inner)
    keys = f" with the keys {', '.join(map(str, list(saved)[:5]))}" if isinstance(saved, Mapping) else ""
    raise ModelLoadError(
        f"{path} holds a {type(saved).__name__}{keys}, not a state_dict (a mapping of parameter names to tensors, "
        f"or a dict holding one under {' or '.join(map(repr, STATE_DICT_KEYS))})."
    )


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does (:func:`..checkpoint_file.is_safetensors`)."""
    from lightning_sas.cli.checkpoint_file import is_safetensors

    try:
        with open(path, "rb") as file:
            return is_safetensors(file.read(16))
    except OSError:
        return False  # check_checkpoint_file names the problem


def model_file_kind(path: Path) -> Literal["torchscript", "export"]:
    """Whether ``path`` is a TorchScript or a ``torch.export`` archive, by the files inside it.

    Raises:
        ModelLoadError: For a missing file, or a file that is neither; the message says what it is.
    """
    from lightning_sas.cli.checkpoint_file import check_checkpoint_file

    expected = "a TorchScript (torch.jit.save) or torch.export (torch.export.save) archive is expected"
    if not path.is_file() or not zipfile.is_zipfile(path):
        try:
            check_checkpoint_file(path)  # says what a file that is no zip archive is
        except ModelLoadError as error:
            raise ModelLoadError(f"{str(error).rstrip('.')}; {expected}.") from None
        raise ModelLoadError(f"{path} is a torch.save file in the legacy format; {expected}.")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.rpartition("/")[2] == "archive_format" for name in names):
        return "export"
    if any("code/" in name for name in names) and any(name.endswith("constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") for name in names):
        raise ModelLoadError(
            f"{path} is a torch.save file (a state_dict, a pickled model or a Lightning checkpoint), not TorchScript "
            "or torch.export: load a state_dict with --arch LIBRARY:NAME --weights FILE, a Lightning checkpoint "
            "with --checkpoint FILE --model MODULE:CLASS."
        )
    raise ModelLoadError(f"{path} is a zip archive holding {', '.join(names[:3]) or 'nothing'}; {expected}.")


def _load_model_file(path: Path, device: torch.device) -> Classifier:
    """The TorchScript or ``torch.export`` model in ``path`` on ``device``.

    Raises:
        ModelLoadError: For a file that is neither, is damaged, or (export) takes other than one input.
    """
    import torch

    kind = model_file_kind(path)
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():
                # torch.jit's deprecation notice says nothing the user of a saved file can act on.
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                return Classifier(torch.jit.load(str(path), map_location=device).eval(), kind)
        with open(path, "rb") as file:  # a file object: torch.export.load refuses names not ending in .pt2
            program = torch.export.load(file)
    except RuntimeError as error:
        what = "TorchScript" if kind == "torchscript" else "torch.export"
        raise ModelLoadError(f"{path} is a damaged {what} archive ({first_line(str(error))[:160]}).") from None
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{path} is a torch.export archive whose program takes {len(inputs)} inputs; explain passes one, "
            "the image batch [B, C, H, W]."
        )
    value = next(node.meta.get("val") for node in program.graph.nodes if node.name == inputs[0])
    shape = tuple(size if isinstance(size, int) else None for size in getattr(value, "shape", ()))
    return Classifier(_exported_module(program.module().to(device)), kind, shape)


def _exported_module(module: nn.Module) -> nn.Module:
    """``module`` (``ExportedProgram.module()``) in a wrapper whose ``train()`` / ``eval()`` stop at it.

    The exported graph refuses ``train()`` and ``eval()`` (its mode was fixed when it was
    exported), but attribution puts every module in eval mode, recursively.
    """
    from torch import nn

    class ExportedModel(nn.Module):
        def __init__(self, program_module: nn.Module) -> None:
            super().__init__()
            self.program = program_module

        def train(self, mode: bool = True) -> ExportedModel:
            self.training = mode
            return self

        def forward(self, images: torch.Tensor) -> Any:
            return self.program(images)

    for parameter in module.parameters():
        parameter.requires_grad_(False)  # the gradients explain the input, never the weights
    return ExportedModel(module)


def _load_lightning(args: argparse.Namespace, device: torch.device) -> Classifier:
    """``--checkpoint`` loaded into ``--model`` with ``--init-args``, as ``lightning-sas audit`` loads it."""
    from lightning_sas.cli.audit_inputs import read_init_args
    from lightning_sas.cli.checkpoint import merge_init_args
    from lightning_sas.cli.model_setup import import_model, load_model

    model_class = import_model(args.model)
    sources = read_init_args(args)
    try:
        init_args = merge_init_args(model_class, sources)
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    hint = "give it with --init-args NAME=VALUE"
    model = load_model(model_class, args, device, init_args, Path(args.checkpoint), init_args_hint=hint)
    return Classifier(model.eval(), "eager")
