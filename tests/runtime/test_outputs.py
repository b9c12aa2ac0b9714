"""lightning_sas.runtime.outputs: reading what a classifier returns as class logits [B, num_classes]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sas.runtime.outputs import (
    ClassifierOutput,
    check_output_selector,
    class_logits,
    describe_output,
    inner_model,
    select_output,
)


def test_class_logits_pass_through_unchanged() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    assert class_logits(logits) is logits
    assert class_logits(logits, batch=3) is logits
    half = logits.detach().half()
    assert class_logits(half).dtype == torch.float16


@pytest.mark.parametrize("shape", [(6,), (6, 1)], ids=["B", "B1"])
def test_single_logit_is_two_class_logits(shape: tuple[int, ...]) -> None:
    z = torch.tensor([-30.0, -2.5, -1e-3, 0.0, 0.75, 40.0]).reshape(shape)
    logits = class_logits(z, batch=6)
    flat = z.reshape(-1)
    assert logits.shape == (6, 2)
    torch.testing.assert_close(logits, torch.stack([-flat / 2, flat / 2], dim=1), atol=0, rtol=0)
    # softmax is exactly (1 - sigmoid(z), sigmoid(z)); the log-odds of class 1 is z.
    probabilities = logits.double().softmax(dim=1)
    sigmoid = torch.sigmoid(flat.double())
    torch.testing.assert_close(probabilities, torch.stack([1 - sigmoid, sigmoid], dim=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], flat, atol=0, rtol=0)
    # The predicted class is z > 0.
    assert logits.argmax(dim=1).tolist() == (flat > 0).long().tolist()


def test_single_logit_keeps_the_gradient() -> None:
    z = torch.randn(4, requires_grad=True)
    logits = class_logits(z)
    (gradient,) = torch.autograd.grad(logits[:, 1].sum() + 3 * logits[:, 0].sum(), z)
    torch.testing.assert_close(gradient, torch.full((4,), 0.5 - 1.5))


@pytest.mark.parametrize(
    ("raw", "batch", "message"),
    [
        (torch.zeros(2, 3, 4, 4), None, r"\[B, num_classes\].*got a tensor of shape \[2, 3, 4, 4\]\.$"),
        (torch.zeros(3, 4), 2, r"\[2, num_classes\], a single logit \[2\] or \[2, 1\].*got a tensor of shape \[3, 4\]"),
        (torch.zeros(4), 1, r"\[1, num_classes\].*got a tensor of shape \[4\]\.$"),
        (torch.zeros(3), 2, r"got a tensor of shape \[3\]\.$"),
        (torch.zeros(2, 0), 2, r"got a tensor of shape \[2, 0\]"),
        (torch.zeros(()), None, r"got a tensor of shape \[\]"),
        (torch.zeros(2, 3, dtype=torch.long), 2, r"got a tensor of shape \[2, 3\]"),
        (torch.zeros(2, dtype=torch.bool), 2, r"got a tensor of shape \[2\]"),
        ("logits", None, r"got a str\. Pass `output=`"),
        (None, None, r"got a NoneType\. Pass `output=`"),
    ],
    ids=[
        "4d",
        "wrong_batch",
        "class_vector_for_one_image",
        "wrong_binary_batch",
        "no_classes",
        "scalar",
        "integer",
        "bool",
        "str",
        "none",
    ],  # fmt: skip
)
def test_not_class_logits(raw, batch, message: str) -> None:
    with pytest.raises(ValueError, match=r"^`model` must return class logits .*" + message):
        class_logits(raw, batch=batch)


def test_a_container_without_a_selector_asks_for_one() -> None:
    with pytest.raises(
        ValueError,
        match=r"got a tuple of 2 \(a tensor of shape \[2, 3\], a tensor of shape \[2, 8\]\)\. Pass `output=`",
    ):
        class_logits((torch.zeros(2, 3), torch.zeros(2, 8)))
    with pytest.raises(ValueError, match=r"got a dict \{'logits': a tensor of shape \[2, 3\]\}\. Pass `output=`"):
        class_logits({"logits": torch.zeros(2, 3)})
    # With a selector, the hint is replaced by what the selector was.
    with pytest.raises(ValueError, match=r"got a tensor of shape \[2, 8, 4, 4\] \(after `output`=1\)\.$"):
        class_logits((torch.zeros(2, 3), torch.zeros(2, 8, 4, 4)), 1)


def test_select_output() -> None:
    logits, features = torch.randn(2, 3), torch.randn(2, 8)
    assert select_output(logits, None) is logits
    assert select_output((logits, features), 0) is logits
    assert select_output([features, logits], -1) is logits
    assert select_output({"logits": logits, "features": features}, "logits") is logits
    assert select_output({"out": (features, logits)}, lambda raw: raw["out"][1]) is logits
    assert class_logits({"features": features, "logits": logits}, "logits", batch=2) is logits


@pytest.mark.parametrize(
    ("raw", "output", "message"),
    [
        (
            (torch.zeros(2, 3),),
            1,
            r"^`output`=1 does not index the model's output, a tuple of 1 \(a tensor of shape \[2, 3\]\)\.$",
        ),
        ((torch.zeros(2, 3),), -2, r"^`output`=-2 does not index"),
        (torch.zeros(2, 3), 0, r"^`output`=0 does not index the model's output, a tensor of shape \[2, 3\]\.$"),
        ({"logits": torch.zeros(2, 3)}, 0, r"^`output`=0 does not index the model's output, a dict \{'logits'"),
        (
            {"a": torch.zeros(1), "logits": torch.zeros(2, 3)},
            "logit",
            r"^`output`='logit' is not a key .*\(keys: \['a', 'logits'\]\)\.$",
        ),
        ([torch.zeros(2, 3)], "logits", r"^`output`='logits' is not a key of the model's output, a list of 1"),
        (
            torch.zeros(2, 3),
            "logits",
            r"^`output`='logits' is not a key of the model's output, a tensor of shape \[2, 3\]\.$",
        ),
    ],
    ids=[
        "index_too_large",
        "negative_index_too_large",
        "index_on_tensor",
        "index_on_dict",
        "missing_key",
        "key_on_list",
        "key_on_tensor",
    ],  # fmt: skip
)
def test_bad_selector(raw, output, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_output(raw, output)
    with pytest.raises(ValueError, match=message):
        class_logits(raw, output)


@pytest.mark.parametrize("output", [None, 0, -1, "logits", len])
def test_check_output_selector_accepts(output) -> None:
    assert check_output_selector(output) is output


@pytest.mark.parametrize("output", [True, 1.0, ["logits"], (0,), b"logits"])
def test_check_output_selector_refuses(output) -> None:
    with pytest.raises(
        TypeError,
        match=r"^`output` must be None, an index \(tuple/list outputs\), a key \(dict outputs\) or a callable",
    ):
        check_output_selector(output)


def test_describe_output() -> None:
    assert describe_output(torch.zeros(2, 3)) == "a tensor of shape [2, 3]"
    assert describe_output(torch.zeros(())) == "a tensor of shape []"
    assert describe_output(3) == "a int"
    assert describe_output({"a": torch.zeros(1), "b": None}) == "a dict {'a': a tensor of shape [1], 'b': a NoneType}"
    assert describe_output((torch.zeros(2), [torch.zeros(3)])) == (
        "a tuple of 2 (a tensor of shape [2], a list of 1 (a tensor of shape [3]))"
    )
    # Long containers are cut after six items, with their length still given.
    described = describe_output([torch.zeros(1)] * 9)
    assert described.startswith("a list of 9 (") and described.count("a tensor") == 6


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.conv(images)
        return {"logits": self.head(features.mean((2, 3))), "features": features}


def test_classifier_output_module() -> None:
    model = TwoHeads()
    wrapped = ClassifierOutput(model, output="logits")
    images = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(wrapped(images), model(images)["logits"], atol=0, rtol=0)
    assert ClassifierOutput.wrap(wrapped) is wrapped
    assert ClassifierOutput.wrap(wrapped, output="features") is wrapped  # a given wrapper is kept as it is
    fresh = ClassifierOutput.wrap(model, output="logits")
    assert isinstance(fresh, ClassifierOutput) and fresh.model is model and fresh.output == "logits"
    assert inner_model(ClassifierOutput(wrapped)) is model
    assert inner_model(model) is model
    # The wrapper's parameters are the model's (state_dict keys under "model.").
    assert [name for name, _ in wrapped.named_parameters()] == [f"model.{name}" for name, _ in model.named_parameters()]
    # The batch is checked against the images forwarded.
    with pytest.raises(ValueError, match=r"class logits \[3, num_classes\].*\(after `output`=<function"):
        ClassifierOutput(model, output=lambda raw: raw["logits"][:1])(images)


def test_classifier_output_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got function"):
        ClassifierOutput(lambda images: images)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`output` must be None"):
        ClassifierOutput(TwoHeads(), output=2.0)  # type: ignore[arg-type]


def test_wrong_batch_of_single_logits_names_the_shape_returned() -> None:
    with pytest.raises(ValueError, match=r"got a tensor of shape \[3, 1\]\.$"):
        class_logits(torch.zeros(3, 1), batch=2)


def test_integer_output_is_refused_for_its_dtype() -> None:
    with pytest.raises(ValueError, match=r"torch\.int64"):
        class_logits(torch.zeros(2, 3, dtype=torch.long), batch=2)
