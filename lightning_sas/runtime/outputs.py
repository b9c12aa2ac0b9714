"""What a classifier returns, read as class logits ``[B, num_classes]`` in one place.

Classifiers come in three shapes, and every method, the predictions, the callback and the
CLI read them through :func:`class_logits`:

* ``[B, num_classes]`` logits: used as they are.
* A single logit ``[B]`` or ``[B, 1]`` (a binary classifier trained with
  ``BCEWithLogitsLoss``): class 1 is the logit ``z``, class 0 its negation. It becomes the
  two-class logits ``(-z/2, z/2)``, whose softmax is exactly ``(1 - sigmoid(z), sigmoid(z))``
  and whose log-odds is ``z``; the predicted class is ``z > 0``. Every method's map is
  invariant to the score's scale, so explaining ``z/2`` explains ``z``.
* A tuple, list or dict (auxiliary heads, features, a loss): the ``output`` selector picks the
  logits: an index, a key, or a callable mapping the raw output to logits.

Anything else is refused with an error that names the output's type and shape and the
``output`` argument, before any attribution work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sas.runtime.model_state import unwrap_model

#: How to find the logits in a model's output: ``None`` (the output is the logits), an index
#: (tuple/list outputs), a key (dict outputs) or a callable ``raw_output -> logits``.
OutputSelector = int | str | Callable[[Any], Tensor] | None


def check_output_selector(output: object) -> OutputSelector:
    """Check an ``output=`` argument's type (cheap; for ``__init__`` methods).

    Raises:
        TypeError: If ``output`` is not ``None``, an int, a str or a callable.
    """
    if output is None or isinstance(output, str) or callable(output):
        return output  # type: ignore[return-value]
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise TypeError(
        "`output` must be None, an index (tuple/list outputs), a key (dict outputs) or a callable "
        f"mapping the model's output to logits, got {type(output).__name__} {output!r}."
    )


def describe_output(value: object) -> str:
    """A short description of a model output for error messages: type and shape(s)."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        items = ", ".join(f"{key!r}: {describe_output(item)}" for key, item in list(value.items())[:6])
        return f"a {type(value).__name__} {{{items}}}"
    if isinstance(value, tuple | list):
        items = ", ".join(describe_output(item) for item in value[:6])
        return f"a {type(value).__name__} of {len(value)} ({items})"
    return f"a {type(value).__name__}"


def select_output(raw: object, output: OutputSelector) -> object:
    """Apply the ``output`` selector to a model's raw output.

    Raises:
        ValueError: If the selector does not fit the output (index out of range, missing key,
            a selector on a plain tensor), naming the output's structure.
    """
    if output is None:
        return raw
    if callable(output) and not isinstance(output, str):
        return output(raw)
    if isinstance(output, str):
        if not isinstance(raw, Mapping) or output not in raw:
            keys = f" (keys: {sorted(map(str, raw))})" if isinstance(raw, Mapping) else ""
            raise ValueError(f"`output`={output!r} is not a key of the model's output, {describe_output(raw)}{keys}.")
        return raw[output]
    if not isinstance(raw, tuple | list) or not -len(raw) <= output < len(raw):
        raise ValueError(f"`output`={output!r} does not index the model's output, {describe_output(raw)}.")
    return raw[output]


def class_logits(raw: object, output: OutputSelector = None, batch: int | None = None) -> Tensor:
    """The model's raw output as class logits ``[B, num_classes]`` (see the module docstring).

    Args:
        raw: What the model's forward returned.
        output: The selector (``None``, index, key or callable).
        batch: The number of images forwarded, to check the output against.

    Returns:
        Logits ``[B, C]`` with ``C >= 2``.

    Raises:
        ValueError: If the (selected) output is not ``[B, C]`` / ``[B]`` / ``[B, 1]`` logits.

    Example:
        >>> import torch
        >>> class_logits(torch.tensor([2.0, -4.0]))  # one logit per image: binary
        tensor([[-1.,  1.],
                [ 2., -2.]])
        >>> class_logits({"logits": torch.zeros(1, 3), "features": torch.ones(1, 8)}, "logits").shape
        torch.Size([1, 3])
    """
    selected = select_output(raw, output)
    expected = "B" if batch is None else str(batch)
    logits = selected
    if isinstance(logits, Tensor) and logits.is_floating_point():
        if logits.dim() == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.dim() == 1 and (batch is None or logits.shape[0] == batch):
            half = logits / 2
            return torch.stack([-half, half], dim=1)
        if logits.dim() == 2 and logits.shape[1] >= 2 and (batch is None or logits.shape[0] == batch):
            return logits
    hint = (
        " Pass `output=` (an index, a key, or a callable returning the logits) to select them."
        if output is None and not isinstance(selected, Tensor)
        else ""
    )
    dtype = (
        f" of dtype {selected.dtype} (logits must be floating point)"
        if isinstance(selected, Tensor) and not selected.is_floating_point()
        else ""
    )
    after = "" if output is None else f" (after `output`={output!r})"
    raise ValueError(
        f"`model` must return class logits [{expected}, num_classes], a single logit [{expected}] or "
        f"[{expected}, 1] (binary), or a tuple/list/dict holding them; got {describe_output(selected)}{dtype}"
        f"{after}.{hint}"
    )


class ClassifierOutput(nn.Module):
    """Wrap a model so that its forward returns class logits ``[B, num_classes]``.

    Every attribution method wraps the model it is given in this (keeping a wrapper it is
    given), so wrap a model yourself only to choose ``output``:

    Args:
        model: The classifier.
        output: Where the logits are in the model's output (see :data:`OutputSelector`).

    Raises:
        TypeError: If ``model`` is not a module or ``output`` has the wrong type.

    Example:
        >>> import torch
        >>> from lightning_sas.methods import GradCAM
        >>> class TwoHeads(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(3, 4, 3)
        ...         self.head = nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         features = self.conv(x)
        ...         return {"logits": self.head(features.mean((2, 3))), "features": features}
        >>> model = ClassifierOutput(TwoHeads(), output="logits")
        >>> GradCAM().attribute(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 8, 8])
    """

    def __init__(self, model: nn.Module, output: OutputSelector = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.output = check_output_selector(output)

    def forward(self, images: Tensor) -> Tensor:
        return class_logits(self.model(images), self.output, images.shape[0])

    @staticmethod
    def wrap(model: nn.Module, output: OutputSelector = None) -> ClassifierOutput:
        """``model`` as a :class:`ClassifierOutput` whose forwards go to the module holding the weights.

        A wrapper given is kept (with its own ``output``); a DistributedDataParallel wrapper
        inside is removed, because its forward registers gradient synchronisation for the
        parameters, which the audit never produces.
        """
        if isinstance(model, ClassifierOutput):
            inner = unwrap_model(model.model)
            return model if inner is model.model else ClassifierOutput(inner, model.output)
        return ClassifierOutput(unwrap_model(model), output)


def inner_model(model: nn.Module) -> nn.Module:
    """The user's model behind a :class:`ClassifierOutput` wrapper (for layer names)."""
    while isinstance(model, ClassifierOutput):
        model = model.model
    return model
