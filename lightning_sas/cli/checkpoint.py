"""Import a model class by name and load a Lightning checkpoint into it, with errors that say what is wrong.

* :func:`import_object` / :func:`import_model_class` (:mod:`lightning_sas.cli.model_import`):
  ``package.module:Name`` as an object / a ``LightningModule`` subclass of ``lightning.pytorch``
  or of the classic ``pytorch_lightning`` (the CLI's ``--model`` and ``--output module:function``).
* :func:`parse_init_args` / :func:`read_config` / :func:`check_init_args`
  (:mod:`lightning_sas.cli.init_args`): constructor arguments for the model, as ``key=value`` or a
  JSON/YAML mapping, or from a LightningCLI config file (``model:`` with ``init_args:``), checked
  against the constructor's signature.
* :func:`check_checkpoint_file` (:mod:`lightning_sas.cli.checkpoint_file`): a cheap look at the
  file's first bytes that recognises what it is when it is no checkpoint: a folder, an empty
  file, an image, a text file, a Git LFS pointer, a zip archive cut short, a plain pickle, ...
  (torch's own errors for those are ``IndexError: pop from empty list``, ``EOFError`` or advice
  to unpickle arbitrary code).
* :func:`check_module_name`: a module name (e.g. Grad-CAM's layer) looked up in the loaded
  model, with the closest name when it is not there.
* :func:`load_checkpoint`: ``load_from_checkpoint``, weights only unless trusted, with
  constructor arguments that override the saved hyper-parameters, and torch's and Lightning's
  errors for damaged or foreign checkpoints (or a constructor argument nobody saved) translated.

Expected problems raise :class:`ModelLoadError` (a ``ValueError``) with a message that names
the path or spec; callers add which option it came from. Anything else (an exception raised
by the user's module at import, or by the model's ``__init__``) propagates unchanged, with its
traceback, because only that traceback can explain it.

Only the standard library is imported with this module; torch, Lightning and PyYAML are imported
by the functions that need them, and ``pytorch_lightning`` never: a class of that namespace can
only come from a module that imported it already.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sas.cli.checkpoint_file import check_checkpoint_file
from lightning_sas.cli.init_args import check_init_args, merge_init_args, parse_init_args, read_config
from lightning_sas.cli.model_import import (
    SPEC_PATTERN,
    ModelLoadError,
    first_line,
    import_model_class,
    import_object,
    lightning_module_classes,
)

if TYPE_CHECKING:
    import torch
    from lightning.pytorch import LightningModule

__all__ = [
    "SPEC_PATTERN",
    "ModelLoadError",
    "check_checkpoint_file",
    "check_init_args",
    "check_module_name",
    "import_model_class",
    "import_object",
    "lightning_module_classes",
    "load_checkpoint",
    "merge_init_args",
    "parse_init_args",
    "read_config",
]


def check_module_name(model: torch.nn.Module, name: str) -> None:
    """Check that ``name`` is a submodule of ``model``, as :func:`~lightning_sas.methods.layers.resolve_layer` finds it.

    Raises:
        ModelLoadError: If it is not, with the closest name (or a module whose name ends with
            ``.name``, e.g. ``model.layer4`` for ``layer4``), else the first names.
    """
    from lightning_sas.methods.layers import resolve_layer

    try:
        resolve_layer(model, name)
    except ValueError:
        names = [module_name for module_name, _ in model.named_modules() if module_name]
        close = [known for known in names if known.endswith(f".{name}")] or difflib.get_close_matches(name, names, n=1)
        hint = (
            f"did you mean {' or '.join(map(repr, close[:3]))}?"
            if close
            else f"its modules are {', '.join(names[:8])}{', ...' if len(names) > 8 else ''} (model.named_modules())."
        )
        raise ModelLoadError(f"{type(model).__name__} has no module named {name!r}; {hint}") from None


def _unpickling_detail(message: str) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"it holds {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return found.group(1).strip() if found else "objects other than tensors and plain types"


def _state_dict_detail(message: str) -> str:
    """First line of a ``load_state_dict`` error plus its first specific complaint."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{lines[0]} {lines[1][:200]}"
    return first_line(message)


def _missing_arguments(model_class: type, error: TypeError) -> str | None:
    """The arguments named by ``error`` if it is the model's constructor called without them, else ``None``."""
    constructor = next((cls for cls in model_class.__mro__ if "__init__" in vars(cls)), model_class)
    pattern = rf"{re.escape(constructor.__qualname__)}\.__init__\(\) missing \d+ required \S+ arguments?: (.+)"
    found = re.fullmatch(pattern, str(error).strip())
    return None if found is None else found.group(1)


def load_checkpoint(
    model_class: type[LightningModule],
    path: os.PathLike[str] | str,
    device: torch.device | str = "cpu",
    *,
    trust: bool = False,
    trust_hint: str = "load it with trust=True",
    init_args: Mapping[str, Any] | None = None,
    init_args_hint: str = "pass it in `init_args`",
) -> LightningModule:
    """Load ``path`` with ``model_class.load_from_checkpoint``, weights only unless ``trust``.

    :func:`check_checkpoint_file` runs first, so files that are no checkpoint at all get a
    message saying what they are. ``init_args`` go to the constructor with the hyper-parameters
    saved in the checkpoint (``save_hyperparameters()``); a given argument wins over a saved one.

    Args:
        model_class: The ``LightningModule`` subclass the checkpoint was saved from.
        path: The checkpoint file.
        device: Where the weights go (``map_location``); the model is moved there.
        trust: Allow unpickling arbitrary Python objects (custom hyper-parameter classes).
            Unpickling can run code from the file: only for trusted checkpoints.
        trust_hint: How the message tells a user to trust a checkpoint (the CLI says
            ``re-run with --trust-checkpoint``).
        init_args: Constructor arguments (checked first with :func:`check_init_args`).
        init_args_hint: How the message tells a user to give a constructor argument that the
            checkpoint does not hold (the CLI names ``--init-args`` and ``--config``).

    Returns:
        The model on ``device``.

    Raises:
        ModelLoadError: If the file is no checkpoint, is damaged, needs unpickling without
            ``trust``, is not a Lightning checkpoint (a bare ``state_dict``), its weights do
            not fit ``model_class``, an ``init_args`` name is not a constructor argument, or the
            constructor needs an argument that neither the checkpoint nor ``init_args`` holds.
    """
    import pickle

    path = Path(path)
    check_checkpoint_file(path)
    init_args = dict(init_args or {})
    check_init_args(model_class, init_args)
    try:
        model = model_class.load_from_checkpoint(path, map_location=device, weights_only=not trust, **init_args)
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, RuntimeError) as error:
        translated = _loading_error(error, path, model_class, trust=trust, hints=(trust_hint, init_args_hint))
        if translated is None:
            raise
        raise translated from None
    return model.to(device)


def _loading_error(
    error: Exception, path: Path, model_class: type, *, trust: bool, hints: tuple[str, str]
) -> ModelLoadError | None:
    """``load_from_checkpoint``'s ``error`` translated, or ``None`` when it is not one :func:`load_checkpoint` knows.

    Args:
        error: What ``load_from_checkpoint`` raised.
        path: The checkpoint file.
        model_class: The class it was loaded into.
        trust: Whether unpickling arbitrary objects was allowed.
        hints: ``(trust_hint, init_args_hint)`` of :func:`load_checkpoint`.
    """
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return _unpickling_error(str(error), path, trust=trust, trust_hint=hints[0])
    if isinstance(error, (EOFError, IndexError)):
        # What torch raises for truncated legacy files.
        return ModelLoadError(
            f"{path} is a damaged PyTorch checkpoint ({type(error).__name__}: {first_line(str(error))}); "
            "was it cut short while saving or copying?"
        )
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else ""
        if key in ("state_dict", "pytorch-lightning_version"):
            return ModelLoadError(
                f"{path} is a PyTorch file but not a Lightning checkpoint (it has no {key!r} entry; a bare "
                "state_dict or model saved with torch.save?); save it with Trainer.save_checkpoint."
            )
        return None
    if isinstance(error, TypeError):
        missing = _missing_arguments(model_class, error)
        if missing is None:
            return None
        return ModelLoadError(
            f"{path}: {model_class.__name__}.__init__ needs {missing}, which the checkpoint's hyper-parameters do "
            f"not hold (not saved with save_hyperparameters()); {hints[1]}."
        )
    return _runtime_error(str(error), path, model_class.__name__)


def _unpickling_error(message: str, path: Path, *, trust: bool, trust_hint: str) -> ModelLoadError:
    """An ``UnpicklingError``: a checkpoint that needs trust (without ``trust``), or a damaged one."""
    if not trust and "Unsupported global" in message:
        return ModelLoadError(
            f"{path} needs unpickling arbitrary Python objects ({_unpickling_detail(message)}); loading it "
            f"could run code from the file. If you trust its origin, {trust_hint}."
        )
    detail = _unpickling_detail(message) if "Weights only load failed" in message else first_line(message)
    return ModelLoadError(f"{path} is a damaged PyTorch checkpoint (unpickling failed: {detail}).")


def _runtime_error(message: str, path: Path, name: str) -> ModelLoadError | None:
    """A ``RuntimeError``: a damaged archive, or weights that do not fit the class ``name``; else ``None``."""
    if "PytorchStreamReader" in message or "Invalid magic number" in message:
        return ModelLoadError(f"{path} is a damaged PyTorch checkpoint ({first_line(message)[:160]}).")
    if "Error(s) in loading state_dict" in message:
        return ModelLoadError(
            f"{path}: the weights do not fit {name} ({_state_dict_detail(message)}); is {name} the class "
            "the checkpoint was saved from?"
        )
    return None
