"""``attribution_mode``: the one context manager of an audit (modes, grads, hooks, RNG), re-entrant."""

from __future__ import annotations

import pytest
import torch
from models import SmallCNN
from torch import Tensor, nn

from lightning_sas.audit.run import explain
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput


def hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())


def test_hooks_left_behind_inside_the_block_are_removed_also_after_a_failure() -> None:
    model = SmallCNN(num_classes=2)
    kept = model.register_forward_hook(lambda *args: None)  # the user's own hook stays
    with attribution_mode(model) as forward_module:
        for module in forward_module.modules():
            module.register_forward_pre_hook(lambda *args: None)
        forward_module(torch.randn(1, 3, 16, 16))
    assert hook_count(model) == 1
    with pytest.raises(RuntimeError, match="on purpose"), attribution_mode(model) as forward_module:
        for module in forward_module.modules():
            module.register_forward_hook(lambda *args: None)
        raise RuntimeError("on purpose")
    assert hook_count(model) == 1
    kept.remove()
    assert hook_count(model) == 0


def test_a_block_inside_a_block_changes_nothing_and_the_outer_one_restores_once() -> None:
    model = SmallCNN(num_classes=2).train()
    with attribution_mode(model) as outer:
        assert not outer.training
        with torch.no_grad(), attribution_mode(ClassifierOutput.wrap(model)) as inner:
            assert torch.is_grad_enabled()  # attribution needs autograd, even under no_grad
            assert not any(module.training for module in model.modules())
            for module in model.modules():
                module.register_forward_hook(lambda *args: None)
            inner(torch.randn(1, 3, 16, 16))
        # The inner block restored nothing: the audit is still in attribution mode, and what it
        # left behind is the outer block's to remove, once.
        assert hook_count(model) == len(list(model.modules()))
        assert not any(module.training for module in model.modules())
        assert all(not parameter.requires_grad for parameter in model.parameters())
    assert all(module.training for module in model.modules())
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert hook_count(model) == 0


class LeavesHooks:
    """A method that forgets to remove the hook it registers (a bug the audit must contain)."""

    name = "leaky"

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        model.register_forward_hook(lambda *args: None)
        return torch.rand(images.shape[0], *images.shape[-2:])


def test_an_audit_enters_attribution_mode_once_and_contains_a_leaky_method() -> None:
    model = SmallCNN(num_classes=2).train()
    images = torch.randn(4, 3, 16, 16)
    probes = Probes(images, torch.tensor([0, 1, 0, 1]), torch.zeros(4, 16, 16, dtype=torch.bool), ["a", "b", "c", "d"])
    entered: list[bool] = []

    class Spy(LeavesHooks):
        def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            entered.append(model.training)
            return super().attribute(model, images, targets)

    result = explain(model, probes, {"leaky": Spy(), "again": Spy()})
    assert set(result.maps) == {"leaky", "again"} and entered == [False, False]
    assert hook_count(model) == 0
    assert all(module.training for module in model.modules())
