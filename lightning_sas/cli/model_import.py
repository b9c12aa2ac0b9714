"""Import an object or a ``LightningModule`` class named ``package.module:Name``, with errors that say what is wrong.

:func:`import_object` backs the CLI's ``--output module:function`` and ``--dataset``;
:func:`import_model_class` backs ``--model``. :class:`ModelLoadError` is the error of every
expected problem with the model (import, constructor arguments, checkpoint file, loading).

Only the standard library is imported with this module; Lightning is imported by the functions
that need it, and ``pytorch_lightning`` never.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

__all__ = [
    "SPEC_PATTERN",
    "ModelLoadError",
    "first_line",
    "import_model_class",
    "import_object",
    "lightning_module_classes",
]

#: ``package.module:Name`` (dotted attribute paths allowed after the colon).
SPEC_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*"


class ModelLoadError(ValueError):
    """A model class that cannot be imported or a checkpoint that cannot be loaded into it."""


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (``"no details"`` when there is none).

    Example:
        >>> first_line("\\n  first line \\nsecond"), first_line("")
        ('first line', 'no details')
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"


def import_object(spec: str) -> Any:
    """The object named by ``package.module:name`` (``name`` may be dotted: ``Outer.Inner``).

    Raises:
        ModelLoadError: If ``spec`` is malformed, the module cannot be imported (ImportError:
            it is not installed, or one of its own imports is missing), or it has no such
            attribute (with a "did you mean" suggestion).

    Any other exception raised while importing the module (a ``SyntaxError``, an error in its
    top-level code) propagates unchanged: its traceback is what explains it.

    Example:
        >>> import os
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
