"""Attribution under mixed precision (bf16 / fp16 autocast) and memory formats (channels-last)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from models import SmallCNN
from torch import Tensor, nn

from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.methods.gradientshap import GradientSHAP
from lightning_sas.methods.ig import IntegratedGradients
from lightning_sas.methods.saliency import Saliency
from lightning_sas.methods.sas import SaS
from lightning_sas.methods.smoothgrad import SmoothGrad
from lightning_sas.scores.faithfulness import faithfulness_curves
from lightning_sas.scores.metrics import spearman

SIZE = 32
#: Where class k's bright square sits (top-left corner on the diagonal).
SQUARE_CORNERS = (2, 12, 22)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: tiny forwards, for which a busy machine's thread pool costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def squares(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noise images, each with a bright 8x8 square whose position gives its class."""
    images = 0.3 * torch.randn(count, 3, SIZE, SIZE, generator=generator)
    targets = torch.randint(0, len(SQUARE_CORNERS), (count,), generator=generator)
    for image, target in zip(images, targets.tolist(), strict=True):
        corner = SQUARE_CORNERS[target]
        image[:, corner : corner + 8, corner : corner + 8] += 1.5
    return images, targets


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """A SmallCNN trained 40 Adam steps on the squares (logits of order 1, as early in a real run) and 4 probes."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN(num_classes=len(SQUARE_CORNERS))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        images, targets = squares(32, generator)
        loss = F.cross_entropy(model(images), targets)
        optimiser.zero_grad()
        loss.backward()  # training the fixture, not attribution
        optimiser.step()
    return model.eval(), *squares(4, torch.Generator().manual_seed(5))


def spans(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    return flat.amax(dim=1) - flat.amin(dim=1)


# ---------------------------------------------------------------- bfloat16


#: (SaS settings, least Spearman per probe of the bf16 map with the float32 map, 30 iterations). Measured
#: per probe: paper 0.968-0.988 and prob 0.959-0.994 (before the fix: constant maps), where another SaS
#: seed in float32 gives 0.33-0.49 (the flat, total-variation-bound mask still carries the shared
#: initial noise); scale-free 0.9990-0.9997 (before the fix, with the bf16 blur: 0.988-0.995).
BFLOAT16_AGREEMENT = {
    "paper": ({"objective": "paper"}, 0.9),
    "prob": ({"objective": "paper", "score": "prob"}, 0.9),
    "scale_free": ({"objective": "scale_free"}, 0.997),
}


@pytest.mark.filterwarnings("ignore:SaS\\(objective='paper'\\).*total variation dominates")
@pytest.mark.parametrize("config", BFLOAT16_AGREEMENT)
def test_sas_under_bfloat16_autocast_ranks_pixels_as_float32(trained, config: str) -> None:
    """The bf16 zeros: the importance map exp(0.3 m) of a flat mask spreads 0.003 around 1, less than
    bf16's steps there; computed under autocast it was constant and normalised to all zeros."""
    model, images, targets = trained
    settings, least = BFLOAT16_AGREEMENT[config]
    full_precision = SaS(iterations=30, **settings).attribute(model, images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = SaS(iterations=30, **settings).attribute(model, images, targets)
    assert bool((spans(mixed) == 1).all()), spans(mixed)  # never a constant (all-zero) map
    agreement = spearman(mixed, full_precision)
    assert bool((agreement >= least).all()), agreement


def test_sas_baseline_is_built_at_the_images_precision_under_autocast() -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    full_precision = SaS().baseline(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(SaS().baseline(images), full_precision)


# ---------------------------------------------------------------- float16


class TinyLogits(nn.Module):
    """``model``'s logits times 1e-5: input gradients of about 1e-7 and below, under float16's smallest normal."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return 1e-5 * self.model(images)


FLOAT16_METHODS = {
    "saliency": lambda: Saliency(),
    "smoothgrad": lambda: SmoothGrad(samples=4),
    "ig": lambda: IntegratedGradients(steps=4),
    "gradientshap": lambda: GradientSHAP(samples=4),
    "gradcam": lambda: GradCAM(),
    "sas": lambda: SaS(iterations=3, objective="scale_free"),
}


@pytest.mark.parametrize("name", FLOAT16_METHODS)
def test_float16_autocast_computes_attributions_in_float32(trained, name: str) -> None:
    """Without gradient scaling float16 gradients underflow (blank maps) or overflow (NaN maps, SaS's
    scale-free weights): under a float16 autocast a method runs in float32 and gives its float32 maps."""
    model, images, targets = trained
    model = TinyLogits(model)
    full_precision = FLOAT16_METHODS[name]().attribute(model, images, targets)
    with torch.autocast("cpu", dtype=torch.float16):
        mixed = FLOAT16_METHODS[name]().attribute(model, images, targets)
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is back after the call
    assert bool((spans(mixed) == 1).all()), spans(mixed)
    torch.testing.assert_close(mixed, full_precision, atol=0, rtol=0)


def test_sas_refuses_a_float16_autocast_dtype() -> None:
    with pytest.raises(ValueError, match=r"`autocast_dtype` must not be torch.float16.*torch.bfloat16"):
        SaS(autocast_dtype=torch.float16)


# ---------------------------------------------------------------- memory formats


class FlattensWithView(nn.Module):
    """Conv, then ``x.view(x.size(0), -1)``: fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * SIZE * SIZE, 3)

    def forward(self, images: Tensor) -> Tensor:
        features = torch.relu(self.conv(images))
        return self.head(features.view(features.size(0), -1))


class RecordsInputFormat(SmallCNN):
    """A SmallCNN that records, per forward, whether its input is strictly channels-last."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.channels_last: list[bool] = []

    def forward(self, images: Tensor) -> Tensor:
        self.channels_last.append(
            images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        )
        return super().forward(images)


def test_a_model_that_flattens_with_view_gets_sas_and_faithfulness() -> None:
    model = FlattensWithView().eval()
    images, targets = squares(2, torch.Generator().manual_seed(1))
    maps = SaS(iterations=2, objective="scale_free").attribute(model, images, targets)
    curves = faithfulness_curves(model, images, targets, {"sas": maps}, steps=4)["sas"]
    assert bool(torch.isfinite(maps).all()) and bool((spans(maps) == 1).all())
    assert bool(torch.isfinite(curves.deletion).all()) and bool(torch.isfinite(curves.insertion).all())


def test_inputs_are_channels_last_only_where_the_caller_uses_it() -> None:
    # Channels-last is kept where the caller chose it (oneDNN / cuDNN run NHWC faster), never imposed.
    for layout in ("contiguous", "channels_last_model", "channels_last_images"):
        model = RecordsInputFormat().eval()
        images, targets = squares(2, torch.Generator().manual_seed(2))
        if layout == "channels_last_model":
            model = model.to(memory_format=torch.channels_last)
        if layout == "channels_last_images":
            images = images.contiguous(memory_format=torch.channels_last)
        maps = SaS(iterations=2, objective="scale_free").attribute(model, images, targets)
        faithfulness_curves(model, images, targets, {"sas": maps}, steps=4)
        assert model.channels_last and set(model.channels_last) == {layout != "contiguous"}, layout
