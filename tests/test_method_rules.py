"""The rules every method follows: no side effects, no leftover hooks, any grad mode, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_sas.methods import GradCAM, SaS
from lightning_sas.methods.base import AttributionMethod
from models import SmallCNN

METHODS = {
    "sas": lambda: SaS(iterations=2, num_masks=4),
    "gradcam": lambda: GradCAM(),
    "gradcam_named": lambda: GradCAM("features.6"),
}


@pytest.fixture(params=list(METHODS))
def method(request: pytest.FixtureRequest) -> AttributionMethod:
    return METHODS[request.param]()


def trained_looking_model() -> nn.Module:
    """In train mode, with BatchNorm statistics, a frozen layer and .grad already populated."""
    model = SmallCNN(num_classes=4).train()
    model(torch.randn(8, 3, 16, 16)).sum().backward()
    model.features[0].bias.requires_grad_(False)
    model.features[0].bias.grad = None
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: module.training for name, module in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad_objects": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "cpu_rng": torch.get_rng_state(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, grad in before["grad_objects"].items():
        assert after["grad_objects"][name] is grad, f"{name}.grad was replaced"
        if grad is not None:
            assert torch.equal(after["grad_values"][name], before["grad_values"][name]), f"{name}.grad changed"
    for kind in ("params", "buffers"):
        for name, value in before[kind].items():
            assert torch.equal(after[kind][name], value), f"{kind[:-1]} {name} changed"
    assert torch.equal(after["cpu_rng"], before["cpu_rng"])
    assert after["grad_enabled"] == before["grad_enabled"]


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_no_side_effects(method: AttributionMethod) -> None:
    model = trained_looking_model()
    images, targets = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 3])
    hooks_before = hook_count(model)
    before = snapshot(model)
    maps = method.attribute(model, images, targets)
    assert_unchanged(model, before)
    assert hook_count(model) == hooks_before
    assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32
    assert 0.0 <= maps.min().item() and maps.max().item() <= 1.0


class FailsOnCall(SmallCNN):
    """Raises on its n-th forward call: a failure midway through a method."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__(num_classes=4)
        self.fail_on_call = fail_on_call
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("boom")
        return super().forward(images)


@pytest.mark.parametrize("fail_on_call", [1, 2, 3])
def test_no_side_effects_when_the_call_fails_midway(method: AttributionMethod, fail_on_call: int) -> None:
    model = FailsOnCall(fail_on_call)
    model.load_state_dict(trained_looking_model().state_dict())
    model.fail_on_call = 0
    model.train()(torch.randn(4, 3, 16, 16)).sum().backward()  # .grad populated, BN stats moved
    model.calls, model.fail_on_call = 0, fail_on_call
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    hooks_before = hook_count(model)
    before = snapshot(model)
    with torch.no_grad():
        try:
            method.attribute(model, images, targets)
        except RuntimeError as error:
            assert "boom" in str(error)
        else:
            assert model.calls < fail_on_call, "the method made the failing call but did not raise"
        assert not torch.is_grad_enabled()
    assert_unchanged(model, before)
    assert hook_count(model) == hooks_before


def test_same_result_inside_no_grad_and_inference_mode(method: AttributionMethod) -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([2, 3])
    plain = method.attribute(model, images, targets)
    with torch.no_grad():
        under_no_grad = method.attribute(model, images, targets)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        # Tensors made here are inference tensors, as in Lightning's validation loop.
        inference_images, inference_targets = images.clone(), targets.clone()
        under_inference = method.attribute(model, inference_images, inference_targets)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(under_no_grad, plain)
    torch.testing.assert_close(under_inference.clone(), plain)


def test_autocast_and_compiled_model(method: AttributionMethod) -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = method.attribute(model, images, targets)
    assert maps.dtype == torch.float32 and maps.shape == (2, 16, 16)
    compiled = torch.compile(copy.deepcopy(model), backend="eager")
    maps_compiled = method.attribute(compiled, images, targets)
    torch.testing.assert_close(maps_compiled, method.attribute(model, images, targets), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("images", "targets", "error", "message"),
    [
        (torch.randn(3, 16, 16), torch.tensor([0, 1, 2]), ValueError, r"`images` must be 4-D .*got shape \[3, 16, 16\]"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([0, 1]), TypeError, "`images` must be a floating-point tensor.*torch.uint8"),
        ([[0.0]], torch.tensor([0]), TypeError, "`images` must be a floating-point tensor.*list"),
        (torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 2]), ValueError, r"`targets` must have shape \[2\].*got shape \[3\]"),
        (torch.randn(2, 3, 16, 16), torch.tensor([0.0, 1.0]), TypeError, "`targets` must be an integer tensor.*torch.float32"),
        (torch.randn(2, 3, 16, 16), torch.tensor([0, 4]), ValueError, r"`targets` must be class indices in \[0, 4\).*\[4\]"),
        (torch.randn(2, 3, 16, 16), torch.tensor([-1, 0]), ValueError, r"class indices in \[0, 4\).*\[-1\]"),
    ],
)
def test_bad_input_errors(method: AttributionMethod, images, targets, error, message) -> None:
    model = SmallCNN(num_classes=4)
    hooks_before = hook_count(model)
    with pytest.raises(error, match=message):
        method.attribute(model, images, targets)
    assert model.training and hook_count(model) == hooks_before


def test_model_that_does_not_return_logits(method: AttributionMethod) -> None:
    model = SmallCNN(num_classes=4)
    model.head = nn.Identity()  # returns the [B, 16, 8, 8] feature map instead of logits
    with pytest.raises(ValueError, match=r"`model` must return logits of shape \[B, num_classes\]"):
        method.attribute(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))


def test_model_must_be_a_module(method: AttributionMethod) -> None:
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        method.attribute(lambda x: x, torch.randn(1, 3, 8, 8), torch.tensor([0]))  # type: ignore[arg-type]
