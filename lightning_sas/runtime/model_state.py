"""Run attribution on a model without leaving a trace on it or on the training run.

Attribution needs the model in eval mode, gradients with respect to the *input* only, and
autograd switched on even when the caller is inside ``torch.no_grad()`` or
``torch.inference_mode()`` (Lightning's validation loop). Everything changed for that is put
back in ``finally``, so a failing attribution leaves the model exactly as it found it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that actually holds the weights, without a DistributedDataParallel wrapper.

    Attribution forwards must not go through DDP: its forward registers gradient
    synchronisation for the parameters, which the audit never produces.
    """
    module = model
    while isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel):
        module = module.module
    return module


def uncompiled(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (or ``model`` itself).

    A compiled graph does not run forward hooks added after compilation, and Grad-CAM's
    single forward gains nothing from compilation anyway.
    """
    return getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model


def _rng_devices(model: nn.Module) -> list[int]:
    return sorted(
        {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
        | ({torch.cuda.current_device()} if torch.cuda.is_available() and torch.cuda.is_initialized() else set())
    )


#: ids of the modules inside an :func:`attribution_mode` block (of this thread / task).
_IN_ATTRIBUTION: ContextVar[frozenset[int]] = ContextVar("lightning_sas_attribution", default=frozenset())
#: The hook tables of an ``nn.Module``: a hook registered inside the block and not removed is removed on exit.
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _already_in_attribution(module: nn.Module) -> bool:
    """Whether ``module`` (or every module below a new wrapper around it) is inside a block already."""
    active = _IN_ATTRIBUTION.get()
    below = [id(child) for child in module.modules() if child is not module]
    return id(module) in active or (bool(below) and all(child in active for child in below))


def _hook_keys(modules: list[nn.Module]) -> list[tuple[nn.Module, str, frozenset]]:
    return [(m, table, frozenset(getattr(m, table))) for m in modules for table in _HOOK_TABLES if hasattr(m, table)]


def _remove_new_hooks(before: list[tuple[nn.Module, str, frozenset]]) -> None:
    for module, table, keys in before:
        entries = getattr(module, table)
        for key in [key for key in entries if key not in keys]:
            del entries[key]


@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in a state fit for attribution and restore it afterwards.

    Inside the block: every module is in eval mode (BatchNorm uses and keeps its running
    statistics, Dropout is off), no parameter requires grad (so autograd does no work for the
    weights and cannot write into their ``.grad``), autograd is enabled and inference mode is
    off, and the torch (CPU and CUDA), NumPy and Python random number generators are forked,
    so a method (or a model) that draws random numbers leaves the training run's streams alone.

    On exit, also after an exception: each module's ``training`` flag, each parameter's
    ``requires_grad`` flag, the grad / inference mode and the RNG states are what they were, and
    any hook registered on the model inside the block and not removed is removed.

    It is the one context manager of an audit: :func:`~lightning_sas.audit.run.explain` enters it
    once, and a block entered again for the same model inside it (a method called by the audit)
    does nothing more: the outer block restores everything once.

    Args:
        model: The model to attribute, possibly wrapped in DistributedDataParallel or compiled
            with ``torch.compile``.

    Yields:
        The module to call for forwards (DDP wrappers removed; compiled models kept).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with attribution_mode(net) as forward_module:
        ...     forward_module.training
        False
        >>> net.training
        True
    """
    forward_module = unwrap_model(model)
    if _already_in_attribution(forward_module):
        with torch.inference_mode(False), torch.enable_grad():
            yield forward_module
        return
    modules = list(forward_module.modules())
    training_flags = [(module, module.training) for module in modules]
    grad_flags = [(param, param.requires_grad) for param in forward_module.parameters()]
    hooks = _hook_keys(modules)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    token = _IN_ATTRIBUTION.set(_IN_ATTRIBUTION.get() | {id(module) for module in modules})
    with torch.random.fork_rng(devices=_rng_devices(forward_module)):
        try:
            for param, _ in grad_flags:
                param.requires_grad_(False)
            forward_module.eval()
            with torch.inference_mode(False), torch.enable_grad():
                yield forward_module
        finally:
            _IN_ATTRIBUTION.reset(token)
            for module, was_training in training_flags:
                module.training = was_training
            for param, required_grad in grad_flags:
                param.requires_grad_(required_grad)
            _remove_new_hooks(hooks)
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def outside_inference_mode(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor autograd can use: inference tensors (made under ``inference_mode``) are cloned."""
    return tensor.clone() if tensor.is_inference() else tensor
