"""Constructor arguments for the model: ``key=value`` or a JSON/YAML mapping, or a LightningCLI config file.

:func:`parse_init_args` (``--init-args``) and :func:`read_config` (``--config``, the ``model:``
section with ``init_args:``) read them; :func:`check_init_args` and :func:`merge_init_args`
check them against the constructor's signature before any checkpoint is loaded.

Only the standard library is imported with this module; PyYAML is imported when a text is read.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_sas.cli.model_import import ModelLoadError, first_line

__all__ = ["check_init_args", "merge_init_args", "parse_init_args", "read_config"]

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
        raise ModelLoadError(f"{name} is not valid YAML or JSON ({first_line(str(error))}).") from None


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
    if model is None and isinstance(content.get("audit"), dict):
        return {}, None  # a nightly job file without model arguments (lightning_sas.cli.job_file)
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


def merge_init_args(model_class: type, sources: Sequence[tuple[str, Mapping[str, Any], str | None]]) -> dict[str, Any]:
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
