"""Import a model class by name and load a Lightning checkpoint into it, with errors that say what is wrong.

* :func:`import_object` / :func:`import_model_class`: ``package.module:Name`` as an object /
  a ``LightningModule`` subclass of ``lightning.pytorch`` or of the classic ``pytorch_lightning``
  (the CLI's ``--model`` and ``--output module:function``).
* :func:`parse_init_args` / :func:`read_config` / :func:`check_init_args`: constructor arguments
  for the model, as ``key=value`` or a JSON/YAML mapping, or from a LightningCLI config file
  (``model:`` with ``init_args:``), checked against the constructor's signature.
* :func:`check_checkpoint_file`: a cheap look at the file's first bytes that recognises what
  it is when it is no checkpoint: a folder, an empty file, an image, a text file, a Git LFS
  pointer, a zip archive cut short, a plain pickle, ... (torch's own errors for those are
  ``IndexError: pop from empty list``, ``EOFError`` or advice to unpickle arbitrary code).
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
import importlib
import inspect
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from lightning.pytorch import LightningModule

__all__ = [
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

#: ``package.module:Name`` (dotted attribute paths allowed after the colon).
SPEC_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*"
#: What ``torch.save`` wrote before PyTorch 1.6 (``_use_new_zipfile_serialization=False``):
#: a pickle protocol 2 header followed by torch's magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
#: File signatures of things people pass by mistake, as (prefix, description).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras model)"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
)
#: Suffixes of checkpoint files, suggested when a folder is given.
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


class ModelLoadError(ValueError):
    """A model class that cannot be imported or a checkpoint that cannot be loaded into it."""


# ----------------------------------------------------------------------------- import


def import_object(spec: str) -> Any:
    """The object named by ``package.module:name`` (``name`` may be dotted: ``Outer.Inner``).

    Raises:
        ModelLoadError: If ``spec`` is malformed, the module cannot be imported (ImportError:
            it is not installed, or one of its own imports is missing), or it has no such
            attribute (with a "did you mean" suggestion).

    Any other exception raised while importing the module (a ``SyntaxError``, an error in its
    top-level code) propagates unchanged: its traceback is what explains it.

    Example:
        >>> import_object("os.path:join") is os.path.join
        True
    """
    if not re.fullmatch(SPEC_PATTERN, spec):
        raise ModelLoadError(f"{spec!r} is not of the form 'package.module:Name'.")
    module_name, _, attribute_path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, "name", None)
        if missing is not None and (module_name == missing or module_name.startswith(f"{missing}.")):
            raise ModelLoadError(
                f"{spec}: cannot import module {module_name!r} ({error}); install your project or set PYTHONPATH."
            ) from None
        raise ModelLoadError(
            f"{spec}: importing module {module_name!r} failed with {type(error).__name__}: {error} "
            "(a dependency of the module is missing?)."
        ) from None
    target: Any = module
    for depth, part in enumerate(attribute_path.split(".")):
        if not hasattr(target, part):
            known = [name for name in dir(target) if not name.startswith("_")]
            close = difflib.get_close_matches(part, known, n=1)
            suggestion = f"; did you mean {close[0]!r}?" if close else "."
            owner = module_name if depth == 0 else f"{module_name}:{'.'.join(attribute_path.split('.')[:depth])}"
            raise ModelLoadError(f"{spec}: {owner!r} has no attribute {part!r}{suggestion}")
        target = getattr(target, part)
    return target


def lightning_module_classes() -> tuple[type, ...]:
    """``lightning.pytorch.LightningModule``, and ``pytorch_lightning.LightningModule`` once imported.

    The classic namespace is looked up in ``sys.modules``, never imported: a class derived from
    it comes from a module that imported it already.
    """
    from lightning.pytorch import LightningModule

    classic = getattr(sys.modules.get("pytorch_lightning"), "LightningModule", None)
    return (LightningModule,) if classic is None else (LightningModule, classic)


def import_model_class(spec: str) -> type[LightningModule]:
    """The ``LightningModule`` subclass named by ``package.module:ClassName``.

    Subclasses of ``lightning.pytorch.LightningModule`` and of ``pytorch_lightning.LightningModule``
    (the classic namespace, same API) are accepted.

    Raises:
        ModelLoadError: As :func:`import_object`, or if the object is not a ``LightningModule``
            subclass.
    """
    # The user's module first: when it cannot be imported, the answer comes without Lightning's import time.
    target = import_object(spec)
    if not (isinstance(target, type) and issubclass(target, lightning_module_classes())):
        kind = "a class" if isinstance(target, type) else f"a {type(target).__name__}"
        raise ModelLoadError(
            f"{spec} is {kind}, not a LightningModule subclass (of lightning.pytorch or pytorch_lightning)."
        )
    return target


# ----------------------------------------------------------------------------- constructor arguments

#: Keyword arguments of ``load_from_checkpoint`` itself: a constructor argument of that name
#: would be taken by Lightning, never reach the model.
_LOADER_ARGUMENTS = ("checkpoint_path", "map_location", "hparams_file", "strict", "weights_only")
#: LightningCLI subcommands, whose sections may hold the ``model:`` section of a config file.
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _load_yaml(text: str, name: str) -> Any:
    """``text`` read by PyYAML's safe loader, with YAML 1.2 floats (``1e-3`` is a number, as in LightningCLI).

    Raises:
        ModelLoadError: If ``text`` is not YAML (JSON is YAML); the message starts with ``name``.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        """The safe loader (plain data only); PyYAML alone reads ``1e-3`` as a string."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+)$"),
        list("-+0123456789."),
    )
    try:
        return yaml.load(text, Loader=Loader)  # safe_load with one more resolver: plain data only
    except yaml.YAMLError as error:
        raise ModelLoadError(f"{name} is not valid YAML or JSON ({_first_line(str(error))}).") from None


def _argument_names(values: dict[Any, Any], name: str) -> dict[str, Any]:
    bad = [key for key in values if not (isinstance(key, str) and key.isidentifier())]
    if bad:
        raise ModelLoadError(f"{name} has the key {bad[0]!r}, which is not an argument name.")
    return values


def parse_init_args(text: str) -> dict[str, Any]:
    """Constructor arguments from ``key=value`` (the value read as YAML) or a JSON / YAML mapping.

    Raises:
        ModelLoadError: If ``text`` is neither (the message quotes it and says what it reads as).

    Example:
        >>> parse_init_args("num_classes=3"), parse_init_args('{"lr": 1e-3, "names": ["a", "b"]}')
        ({'num_classes': 3}, {'lr': 0.001, 'names': ['a', 'b']})
    """
    key, equals, value = text.partition("=")
    if equals and key.strip().isidentifier() and not text.lstrip().startswith("{"):
        return {key.strip(): _load_yaml(value.strip(), repr(text))}
    parsed = _load_yaml(text, repr(text))
    if not isinstance(parsed, dict):
        raise ModelLoadError(
            f"{text!r} is neither key=value nor a mapping of argument names to values (it reads as a "
            f"{type(parsed).__name__}); e.g. num_classes=3 or '{{\"num_classes\": 3}}'."
        )
    return _argument_names(parsed, repr(text))


def read_config(path: os.PathLike[str] | str) -> tuple[dict[str, Any], str | None]:
    """The model's constructor arguments and ``class_path`` from a LightningCLI config file.

    The ``model:`` section (at the top, or under a subcommand such as ``fit:``) holds either
    ``init_args:`` (with an optional ``class_path:``) or the arguments directly, as LightningCLI
    writes and reads them. Other sections (``trainer:``, ``data:``, ...) are ignored. Values are
    passed on as they are: a nested ``class_path:`` / ``init_args:`` object is instantiated by
    Lightning's own instantiator for checkpoints that LightningCLI saved.

    Returns:
        ``(init_args, class_path)``; ``class_path`` is ``None`` when the file has none.

    Raises:
        ModelLoadError: If the file cannot be read, is not YAML, or has no ``model:`` mapping
            of argument names (the message starts with the path).
    """
    try:
        content = _load_yaml(Path(path).read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} cannot be read ({getattr(error, 'strerror', None) or error}).") from None
    if not isinstance(content, dict):
        kind = type(content).__name__
        raise ModelLoadError(f"{path} is not a LightningCLI config (a mapping of sections) but a {kind}.")
    sections = [content, *(content[name] for name in _SUBCOMMANDS if isinstance(content.get(name), dict))]
    model = next((section["model"] for section in sections if "model" in section), None)
    if isinstance(model, str):  # "model: my_project.Net", a class path without arguments
        return {}, model
    if not isinstance(model, dict):
        found = "no model: section" if model is None else f"a model: section that is a {type(model).__name__}"
        raise ModelLoadError(f"{path} has {found}; expected model: with init_args: or the model's arguments.")
    if "class_path" not in model and "init_args" not in model:
        return _argument_names(dict(model), f"{path}: model:"), None
    init_args = model.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ModelLoadError(f"{path} has model.init_args: {init_args!r}, not a mapping of argument names to values.")
    class_path = model.get("class_path")
    arguments = _argument_names(dict(init_args), f"{path}: model.init_args:")
    return arguments, None if class_path is None else str(class_path)


def check_init_args(model_class: type, init_args: Mapping[str, Any], class_path: str | None = None) -> None:
    """Check constructor arguments against ``model_class.__init__``'s signature, before any loading.

    Args:
        model_class: The model's class.
        init_args: Argument names and values.
        class_path: A config file's ``model.class_path``: it must name ``model_class``.

    Raises:
        ModelLoadError: If ``class_path`` names another class, or an argument is not one the
            constructor takes (with the closest name) or is one ``load_from_checkpoint`` takes itself.
    """
    name = model_class.__name__
    if class_path is not None and class_path.rsplit(".", 1)[-1] != name:
        raise ModelLoadError(f"model.class_path is {class_path!r}, another class than the model's, {name}.")
    parameters = list(inspect.signature(model_class.__init__).parameters.values())[1:]
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        accepted = None  # **kwargs takes any name
    else:
        accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in init_args:
        if key in _LOADER_ARGUMENTS:
            raise ModelLoadError(
                f"{key!r} is an argument of load_from_checkpoint itself; it cannot be passed to {name}.__init__."
            )
        if accepted is not None and key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its arguments: {', '.join(accepted) or 'none'}."
            raise ModelLoadError(f"{name}.__init__ takes no argument {key!r}; {hint}")


def merge_init_args(
    model_class: type, sources: Sequence[tuple[str, Mapping[str, Any], str | None]]
) -> dict[str, Any]:
    """Constructor arguments from several ``(source, init_args, class_path)``, checked and merged in order.

    A later source wins over an earlier one (the CLI passes ``--config`` first, then each ``--init-args``).

    Raises:
        ModelLoadError: As :func:`check_init_args`, the message starting with the source (``"--init-args 'x=1'"``).
    """
    merged: dict[str, Any] = {}
    for source, init_args, class_path in sources:
        try:
            check_init_args(model_class, init_args, class_path)
        except ModelLoadError as error:
            raise ModelLoadError(f"{source}: {error}") from None
        merged.update(init_args)
    return merged


# ----------------------------------------------------------------------------- the loaded model


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


# ----------------------------------------------------------------------------- checkpoint file


def _checkpoints_in(folder: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` checkpoint-like files under ``folder`` (relative paths), newest first."""
    found: list[Path] = []
    try:
        for path in folder.rglob("*"):
            if path.suffix.lower() in _CHECKPOINT_SUFFIXES and path.is_file():
                found.append(path)
            if len(found) >= 50:  # a huge tree: enough to suggest a few
                break
    except OSError:
        return []
    found.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return [str(path) for path in found[:limit]]


def _text_preview(head: bytes) -> str | None:
    """The first line of ``head`` if it reads as text, else ``None``."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The first bytes may end inside a multi-byte character.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not text or any(ord(char) < 32 and char not in "\t\r\n" for char in text):
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:60] + ("..." if len(first) > 60 else "")


def _is_safetensors(head: bytes) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    return len(head) > 9 and head[8:10] in (b'{"', b"{ ")


def check_checkpoint_file(path: os.PathLike[str] | str) -> None:
    """Check that ``path`` can be a PyTorch checkpoint, by its first bytes (no torch needed).

    Accepts a zip archive with a ``data.pkl`` inside (what ``torch.save`` writes) and the legacy
    format (before PyTorch 1.6). Everything else is refused with what it is instead.

    Raises:
        ModelLoadError: For a missing path, a folder (naming checkpoint files inside it), an
            unreadable or empty file, a zip archive cut short or without ``data.pkl``, an
            image, a text file (a Git LFS pointer is named as such), a safetensors file, a
            plain pickle, or unknown bytes. The message starts with the path.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".ckpt") as file:
        ...     try:
        ...         check_checkpoint_file(file.name)
        ...     except ModelLoadError as error:
        ...         print(str(error).split(" is ")[1][:13])
        an empty file
    """
    path = Path(path)
    if path.is_dir():
        inside = _checkpoints_in(path)
        hint = f"; it holds {', '.join(inside)}: give one of those files" if inside else " (it holds no .ckpt file)"
        raise ModelLoadError(f"{path} is a folder, not a checkpoint file{hint}.")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file.")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file.")
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError as error:
        raise ModelLoadError(f"{path} cannot be read ({error.strerror or error}).") from None
    if not head:
        raise ModelLoadError(
            f"{path} is an empty file (0 bytes), not a checkpoint; was it written completely (disk full, "
            "job killed while saving)?"
        )
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise ModelLoadError(
                f"{path} is a damaged zip archive, the format torch.save writes, but its end is missing: "
                f"the file was cut short ({path.stat().st_size} bytes) while saving or copying."
            ) from None
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            raise ModelLoadError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside; it holds "
                f"{', '.join(names[:3]) or 'nothing'})."
            )
        return
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return
    for signature, description in _SIGNATURES:
        if head.startswith(signature):
            raise ModelLoadError(f"{path} is {description}, not a PyTorch checkpoint.")
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        raise ModelLoadError(
            f"{path} is a Python pickle but not a PyTorch checkpoint (torch.save writes a zip archive); "
            "save the model with Trainer.save_checkpoint."
        )
    if _is_safetensors(head):
        raise ModelLoadError(
            f"{path} is a safetensors file (weights only); a Lightning checkpoint (.ckpt, "
            "from Trainer.save_checkpoint) is needed."
        )
    preview = _text_preview(head)
    if preview is not None:
        if preview.startswith("version https://git-lfs"):
            raise ModelLoadError(
                f"{path} is a Git LFS pointer, not the checkpoint itself; fetch it with 'git lfs pull'."
            )
        raise ModelLoadError(f"{path} is a text file (it starts with {preview!r}), not a PyTorch checkpoint.")
    raise ModelLoadError(
        f"{path} is not a PyTorch checkpoint: neither a zip archive (what torch.save writes) nor the legacy "
        f"format; it starts with the bytes {head[:8].hex(' ')}."
    )


# ----------------------------------------------------------------------------- loading


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"


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
    return _first_line(message)


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
    name = model_class.__name__
    try:
        model = model_class.load_from_checkpoint(path, map_location=device, weights_only=not trust, **init_args)
    except pickle.UnpicklingError as error:
        message = str(error)
        if not trust and "Unsupported global" in message:
            raise ModelLoadError(
                f"{path} needs unpickling arbitrary Python objects ({_unpickling_detail(message)}); loading it "
                f"could run code from the file. If you trust its origin, {trust_hint}."
            ) from None
        detail = _unpickling_detail(message) if "Weights only load failed" in message else _first_line(message)
        raise ModelLoadError(f"{path} is a damaged PyTorch checkpoint (unpickling failed: {detail}).") from None
    except (EOFError, IndexError) as error:
        # What torch raises for truncated legacy files.
        raise ModelLoadError(
            f"{path} is a damaged PyTorch checkpoint ({type(error).__name__}: {_first_line(str(error))}); "
            "was it cut short while saving or copying?"
        ) from None
    except KeyError as error:
        key = error.args[0] if error.args else ""
        if key in ("state_dict", "pytorch-lightning_version"):
            raise ModelLoadError(
                f"{path} is a PyTorch file but not a Lightning checkpoint (it has no {key!r} entry; a bare "
                "state_dict or model saved with torch.save?); save it with Trainer.save_checkpoint."
            ) from None
        raise
    except TypeError as error:
        missing = _missing_arguments(model_class, error)
        if missing is None:
            raise
        raise ModelLoadError(
            f"{path}: {name}.__init__ needs {missing}, which the checkpoint's hyper-parameters do not hold (not "
            f"saved with save_hyperparameters()); {init_args_hint}."
        ) from None
    except RuntimeError as error:
        message = str(error)
        if "PytorchStreamReader" in message or "Invalid magic number" in message:
            raise ModelLoadError(f"{path} is a damaged PyTorch checkpoint ({_first_line(message)[:160]}).") from None
        if "Error(s) in loading state_dict" in message:
            raise ModelLoadError(
                f"{path}: the weights do not fit {name} ({_state_dict_detail(message)}); is {name} the class "
                "the checkpoint was saved from?"
            ) from None
        raise
    return model.to(device)
