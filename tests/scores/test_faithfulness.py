"""Deletion / insertion faithfulness: the batched curves against a plain loop and Quantus, a known
answer, side effects, NaN maps, binary models, chunking and argument errors."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from models import RectangleModel, SingleLogit, SmallCNN, TupleAndDictOutputs, TwoLogitsFrom, box_mask
from torch import Tensor, nn

from lightning_sas.methods import SaS
from lightning_sas.scores.faithfulness import Faithfulness, FaithfulnessCurves, curve_auc, faithfulness_curves
from lightning_sas.scores.faithfulness_forwards import pixel_ranks

SIZE = 24  # 576 pixels: divisible by the step counts used here (and by 3 * steps for Quantus)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these forwards are tiny, and on a busy machine the thread pool's
    synchronisation costs more than the work (measured 5x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probes(batch: int = 3, size: int = SIZE, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    targets = torch.randint(0, 3, (batch,), generator=generator)
    return images, targets


def several_maps(batch: int = 3, size: int = SIZE) -> dict[str, Tensor]:
    """Three methods' maps, one with many ties (quantised) so the tie-break matters."""
    generator = torch.Generator().manual_seed(1)
    smooth = torch.rand(batch, size, size, generator=generator)
    return {
        "random": torch.rand(batch, size, size, generator=generator),
        "quantised": (smooth * 4).floor(),  # 4 distinct values: ties everywhere
        "float64": torch.rand(batch, size, size, generator=generator, dtype=torch.float64),
    }


def baseline_images(images: Tensor, baseline: str | float) -> Tensor:
    if baseline == "blur":
        return SaS().baseline(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    return torch.full_like(images, float(baseline))


@torch.no_grad()
def reference_curves(
    model: nn.Module, images: Tensor, targets: Tensor, single_map: Tensor, steps: int, baseline: str | float
) -> tuple[Tensor, Tensor]:
    """The definition, one image and one step at a time: (deletion, insertion) ``[B, steps + 1]``."""
    model.eval()
    base = baseline_images(images, baseline)
    _, _, height, width = images.shape
    pixels = height * width
    deletion = torch.zeros(images.shape[0], steps + 1)
    insertion = torch.zeros(images.shape[0], steps + 1)
    for b in range(images.shape[0]):
        order = np.argsort(-single_map[b].double().numpy().ravel(), kind="stable")
        for k in range(steps + 1):
            moved = torch.zeros(pixels, dtype=torch.bool)
            moved[torch.from_numpy(order[: round(k * pixels / steps)].copy())] = True
            moved = moved.view(height, width)
            deleted = images[b].clone()
            deleted[:, moved] = base[b][:, moved]
            inserted = base[b].clone()
            inserted[:, moved] = images[b][:, moved]
            for curve, image in ((deletion, deleted), (insertion, inserted)):
                curve[b, k] = model(image[None]).softmax(dim=1)[0, targets[b]]
    return deletion, insertion


# ---------------------------------------------------------------------------- (1) against a plain loop


@pytest.mark.parametrize("baseline", ["blur", "zero", 0.5])
def test_batched_curves_equal_a_per_image_per_step_loop(baseline: str | float) -> None:
    model = SmallCNN(num_classes=3).eval()
    images, targets = probes()
    maps = several_maps()
    steps = 8
    expected = {
        name: reference_curves(model, images, targets, single_map, steps, baseline) for name, single_map in maps.items()
    }
    for max_batch in (3, 1000):  # chunks cutting across probes, steps and methods; one forward
        curves = faithfulness_curves(model, images, targets, maps, steps=steps, baseline=baseline, max_batch=max_batch)
        assert list(curves) == list(maps)
        for name, (deletion, insertion) in expected.items():
            context = f"{name}, max_batch={max_batch}"
            assert curves[name].deletion.dtype == torch.float32
            torch.testing.assert_close(curves[name].deletion, deletion, atol=1e-6, rtol=0, msg=context)
            torch.testing.assert_close(curves[name].insertion, insertion, atol=1e-6, rtol=0, msg=context)
            torch.testing.assert_close(curves[name].deletion_auc, curve_auc(deletion), atol=1e-6, rtol=0)


def test_uneven_pixel_counts_follow_round_and_default_chunking() -> None:
    """7 steps of 576 pixels (82.3 per step): counts are round(k * H * W / steps), default chunk."""
    model = SmallCNN(num_classes=3).eval()
    images, targets = probes(batch=2)
    single_map = torch.rand(2, SIZE, SIZE)
    curves = faithfulness_curves(model, images, targets, {"m": single_map}, steps=7)
    deletion, insertion = reference_curves(model, images, targets, single_map, 7, "blur")
    torch.testing.assert_close(curves["m"].deletion, deletion, atol=1e-6, rtol=0)
    torch.testing.assert_close(curves["m"].insertion, insertion, atol=1e-6, rtol=0)


def test_pixel_ranks_are_the_inverse_of_a_stable_descending_argsort() -> None:
    maps = torch.rand(2, 6, 5)
    maps[0, :3] = 0.5  # a block of ties
    maps[1] = (maps[1] * 3).floor()
    ranks = pixel_ranks(maps)
    for b in range(2):
        order = np.argsort(-maps[b].numpy().ravel(), kind="stable")
        assert ranks[b][torch.from_numpy(order)].tolist() == list(range(30))
    assert pixel_ranks(torch.zeros(1, 2, 2)).tolist() == [[0, 1, 2, 3]]  # all tied: row-major order


def test_curve_auc_is_the_trapezoid_over_zero_one() -> None:
    assert curve_auc(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])).tolist() == [0.25, 0.75]
    values = torch.rand(3, 11)
    expected = torch.from_numpy(np.trapezoid(values.numpy(), dx=0.1, axis=1))
    torch.testing.assert_close(curve_auc(values), expected)


def test_each_distinct_image_is_forwarded_once_and_chunks_stay_under_max_batch() -> None:
    class Counting(SmallCNN):
        def __init__(self) -> None:
            super().__init__(num_classes=3)
            self.batch_sizes: list[int] = []

        def forward(self, images: Tensor) -> Tensor:
            self.batch_sizes.append(images.shape[0])
            return super().forward(images)

    model = Counting()
    images, targets = probes(batch=3)
    faithfulness_curves(model, images, targets, several_maps(), steps=5, max_batch=4)
    # Image and baseline once per probe; 2 kinds x 4 interior steps x 3 methods x 3 probes.
    assert sum(model.batch_sizes) == 2 * 3 + 2 * 4 * 3 * 3
    assert max(model.batch_sizes) <= 4


def test_out_of_memory_halves_the_chunk_and_gives_the_same_curves() -> None:
    class SmallMemory(SmallCNN):
        def forward(self, images: Tensor) -> Tensor:
            if images.shape[0] > 4:
                raise torch.OutOfMemoryError("simulated")
            return super().forward(images)

    model = SmallMemory(num_classes=3).eval()
    images, targets = probes(batch=2)
    maps = {"m": torch.rand(2, SIZE, SIZE)}
    with pytest.warns(UserWarning, match="ran out of memory") as caught:
        retried = faithfulness_curves(model, images, targets, maps, steps=4, max_batch=16)
    assert [str(warning.message).rsplit(" ", 1)[-1] for warning in caught] == ["max_batch=8.", "max_batch=4."]
    direct = faithfulness_curves(model, images, targets, maps, steps=4, max_batch=4)
    torch.testing.assert_close(retried["m"].deletion, direct["m"].deletion, atol=0, rtol=0)


# ---------------------------------------------------------------------------- (2) against Quantus


def quantus_pixel_flipping(
    model: nn.Module,
    start: Tensor,
    towards: Tensor | float,
    targets: Tensor,
    single_map: Tensor,
    steps: int,
    raw_map: bool,
) -> Tensor:
    """Quantus' PixelFlipping from ``start``, moving the top-ranked pixels to ``towards``: ``[B, steps]``.

    Quantus flattens the images' C*H*W values into "features" and broadcasts a [B, 1, H, W]
    attribution over channels, so one pixel (all channels) is C features with one value;
    features_in_step = C*H*W/steps moves H*W/steps whole pixels per step (and its check wants
    H*W divisible by it, hence steps divisible by 3 here). Its argsort(-a) is a quicksort, not
    stable, so for a map with ties (``raw_map=False``) we hand it ``H*W - rank`` (distinct
    values, our order) instead of the map; a map without ties goes in as it is, so there
    Quantus' own ordering is checked too.

    What Quantus cannot be configured to do, and how the comparison gets around it:

    * No step k=0: its first point is after the first step, so it is compared with our
      points k = 1 .. steps (our k=0 point is the unperturbed image, checked by the loop test).
    * No insertion curve: insertion is PixelFlipping started at the baseline, moving pixels
      towards the image (a custom perturb_func copying the image's values).
    * Only constant baselines (or one shared array of the flipped features' shape): a
      per-image baseline such as the blur is a perturb_func copying the baseline's values.
    * Its AUC (``return_auc_per_sample``) is np.trapz with dx=1 over those ``steps`` points,
      not over [0, 1], and np.trapz no longer exists in NumPy 2.4: AUCs are not compared.
    """
    quantus = pytest.importorskip("quantus")
    batch, channels, height, width = start.shape
    pixels = height * width
    order_by = single_map if raw_map else (pixels - pixel_ranks(single_map)).float().view(batch, height, width)
    attributions = order_by[:, None].numpy()
    if isinstance(towards, Tensor):
        source = towards.reshape(batch, -1).numpy()

        def copy_from_source(arr: np.ndarray, indices: np.ndarray, **kwargs: object) -> np.ndarray:
            perturbed = arr.copy()
            rows = np.arange(arr.shape[0])[:, None]
            perturbed[rows, indices] = source[rows, indices]
            return perturbed

        settings = {"perturb_func": copy_from_source}
    else:  # Quantus' own constant-baseline replacement
        settings = {"perturb_baseline": float(towards)}
    metric = quantus.PixelFlipping(
        features_in_step=channels * pixels // steps, normalise=False, abs=False, disable_warnings=True, **settings
    )
    scores = metric(
        model=model,
        x_batch=start.numpy(),
        y_batch=targets.numpy(),
        a_batch=attributions,
        channel_first=True,
        softmax=True,
        device="cpu",
        batch_size=batch,  # one Quantus batch, so copy_from_source's rows are the probes
    )
    return torch.tensor(np.asarray(scores), dtype=torch.float32)


@pytest.mark.parametrize("baseline", ["blur", "zero", 0.25])
def test_curves_equal_quantus_pixel_flipping(baseline: str | float) -> None:
    pytest.importorskip("quantus")
    model = SmallCNN(num_classes=3).eval()  # Quantus refuses a model in training mode
    images, targets = probes()
    maps = several_maps()
    steps = 6
    base = baseline_images(images, baseline)
    curves = faithfulness_curves(model, images, targets, maps, steps=steps, baseline=baseline)
    for name, single_map in maps.items():
        towards = base if baseline == "blur" else (0.0 if baseline == "zero" else baseline)
        raw_map = name != "quantised"  # the other two have no ties
        deletion = quantus_pixel_flipping(model, images, towards, targets, single_map, steps, raw_map)
        insertion = quantus_pixel_flipping(model, base, images, targets, single_map, steps, raw_map)
        # Quantus' curve starts after the first step: our points k = 1 .. steps.
        torch.testing.assert_close(curves[name].deletion[:, 1:], deletion, atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(curves[name].insertion[:, 1:], insertion, atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------------------- (3) known answer


def test_oracle_map_beats_random_and_reversed_maps_on_a_rectangle_model() -> None:
    """The score depends only on a rectangle: its map must delete fastest and insert fastest."""
    size, box = 32, (6, 16, 18, 30)
    model = RectangleModel(size, box, logit_scale=10.0)
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    targets = torch.ones(4, dtype=torch.long)
    oracle = box_mask(size, box).float().expand(4, -1, -1)
    maps = {"oracle": oracle, "random": torch.rand(4, size, size), "reversed": 1 - oracle}
    curves = Faithfulness(steps=16)(model, images, targets, maps)
    oracle_curves = curves["oracle"]
    for other in ("random", "reversed"):
        assert (oracle_curves.deletion_auc < curves[other].deletion_auc - 0.05).all(), other
        assert (oracle_curves.insertion_auc > curves[other].insertion_auc + 0.05).all(), other


# ---------------------------------------------------------------------------- (4) no side effects


class DrawsRandomNumbers(SmallCNN):
    """Draws from every global RNG in its forward, as a model with stochastic layers could."""

    def forward(self, images: Tensor) -> Tensor:
        torch.rand(1)
        np.random.rand()
        random.random()
        return super().forward(images)


def test_no_side_effects_on_the_model_or_the_random_streams() -> None:
    model = DrawsRandomNumbers(num_classes=3).train()
    model.head[-1].weight.requires_grad_(False)
    model.features[1].eval()  # a mixed train/eval state must come back as it was
    training = [module.training for module in model.modules()]
    requires_grad = [param.requires_grad for param in model.parameters()]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    images, targets = probes()

    curves = faithfulness_curves(model, images, targets, several_maps(), steps=4)

    assert [module.training for module in model.modules()] == training
    assert [param.requires_grad for param in model.parameters()] == requires_grad
    assert all(param.grad is None for param in model.parameters())
    for key, value in model.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert random.getstate() == rng[2]
    assert torch.is_grad_enabled()
    # And the curves are the eval-mode model's (dropout off, BN running statistics).
    eval_curves = faithfulness_curves(model.eval(), images, targets, several_maps(), steps=4)
    torch.testing.assert_close(curves["random"].deletion, eval_curves["random"].deletion, atol=1e-6, rtol=0)


def test_works_inside_inference_mode_and_under_autocast() -> None:
    model = SmallCNN(num_classes=3).eval()
    images, targets = probes()
    maps = several_maps()
    plain = faithfulness_curves(model, images, targets, maps, steps=4)
    with torch.inference_mode():
        inference_images = images.clone()  # an inference tensor, as in Lightning's validation loop
        inside = faithfulness_curves(model, inference_images, targets.clone(), maps, steps=4)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(inside["random"].deletion, plain["random"].deletion, atol=0, rtol=0)
    torch.testing.assert_close(inside["random"].insertion, plain["random"].insertion, atol=0, rtol=0)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = faithfulness_curves(model, images, targets, maps, steps=4)
    assert mixed["random"].deletion.dtype == torch.float32
    torch.testing.assert_close(mixed["random"].deletion, plain["random"].deletion, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------- (5) NaN maps


def test_a_nan_map_gives_nan_curves_for_that_probe_only() -> None:
    model = SmallCNN(num_classes=3).eval()
    images, targets = probes()
    maps = several_maps()
    broken = maps["random"].clone()
    broken[1, 4, 7] = float("nan")
    curves = faithfulness_curves(model, images, targets, {**maps, "random": broken}, steps=4)
    clean = faithfulness_curves(model, images, targets, maps, steps=4)

    nan_probe = curves["random"]
    assert nan_probe.deletion[1].isnan().all() and nan_probe.insertion[1].isnan().all()
    assert nan_probe.deletion_auc.isnan().tolist() == [False, True, False]
    assert nan_probe.insertion_auc.isnan().tolist() == [False, True, False]
    torch.testing.assert_close(nan_probe.deletion[[0, 2]], clean["random"].deletion[[0, 2]], atol=0, rtol=0)
    for name in ("quantised", "float64"):  # other methods' curves of the same probe untouched
        torch.testing.assert_close(curves[name].deletion, clean[name].deletion, atol=0, rtol=0)
    infinite = maps["random"].clone()
    infinite[0, 0, 0] = float("inf")
    assert faithfulness_curves(model, images, targets, {"m": infinite}, steps=2)["m"].deletion_auc.isnan().tolist() == [
        True,
        False,
        False,
    ]


# ---------------------------------------------------------------------------- (6) model outputs


@pytest.mark.parametrize("squeeze", [True, False])
def test_binary_single_logit_model(squeeze: bool) -> None:
    binary = SingleLogit(squeeze=squeeze).eval()
    images, _ = probes()
    targets = torch.tensor([1, 0, 1])
    maps = {"m": torch.rand(3, SIZE, SIZE)}
    curves = faithfulness_curves(binary, images, targets, maps, steps=4)["m"]
    # Class 1 has probability sigmoid(z), class 0 its complement: the two-logit (-z/2, z/2) model.
    two_logits = faithfulness_curves(TwoLogitsFrom(binary, 0.5).eval(), images, targets, maps, steps=4)["m"]
    torch.testing.assert_close(curves.deletion, two_logits.deletion, atol=1e-6, rtol=0)
    torch.testing.assert_close(curves.insertion, two_logits.insertion, atol=1e-6, rtol=0)
    with torch.no_grad():
        z = binary(images).reshape(-1)
    expected = torch.where(targets == 1, torch.sigmoid(z), 1 - torch.sigmoid(z))
    torch.testing.assert_close(curves.deletion[:, 0], expected, atol=1e-6, rtol=0)


def test_output_selector_picks_the_logits() -> None:
    model = TupleAndDictOutputs("dict", num_classes=3).eval()
    images, targets = probes()
    maps = {"m": torch.rand(3, SIZE, SIZE)}

    class LogitsOnly(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)["logits"]

    selected = Faithfulness(steps=3)(model, images, targets, maps, output="logits")["m"]
    plain = Faithfulness(steps=3)(LogitsOnly(model), images, targets, maps)["m"]
    torch.testing.assert_close(selected.deletion, plain.deletion, atol=0, rtol=0)
    with pytest.raises(ValueError, match="Pass `output=`"):
        faithfulness_curves(model, images, targets, maps, steps=3)


# ---------------------------------------------------------------------------- (7) argument errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, r"`steps` must be an integer >= 1, got 0"),
        ({"steps": 2.5}, r"`steps` must be an integer >= 1, got 2.5"),
        ({"steps": True}, r"`steps` must be an integer >= 1, got True"),
        ({"baseline": "gray"}, r"`baseline` must be 'blur', 'zero', a number .*got 'gray'"),
        ({"baseline": float("nan")}, r"`baseline` must be .*finite number.*got nan"),
        ({"baseline": torch.zeros(3, 3, dtype=torch.long)}, r"`baseline` tensor must be floating point.*torch.int64"),
        ({"max_batch": 0}, r"`max_batch` must be None or an integer >= 1, got 0"),
    ],
)
def test_bad_configuration_is_refused_in_init_and_in_the_function(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faithfulness(**kwargs)
    images, targets = probes(batch=1, size=8)
    with pytest.raises(ValueError, match=message):
        faithfulness_curves(SmallCNN(), images, targets, {"m": torch.rand(1, 8, 8)}, **kwargs)


def test_bad_call_arguments_are_refused_with_clear_messages() -> None:
    model = SmallCNN(num_classes=3)
    images, targets = probes(batch=2, size=8)
    maps = {"m": torch.rand(2, 8, 8)}
    metric = Faithfulness(steps=2)
    with pytest.raises(ValueError, match=r"`maps\['m'\]` must have shape \[2, 8, 8\].*got shape \[2, 8, 9\]"):
        metric(model, images, targets, {"m": torch.rand(2, 8, 9)})
    with pytest.raises(ValueError, match=r"`maps\['m'\]` must have shape \[2, 8, 8\].*got shape \[1, 3, 8, 8\]"):
        metric(model, images, targets, {"m": torch.rand(1, 3, 8, 8)})
    with pytest.raises(TypeError, match=r"`maps` must be a mapping.*\{\"name\": maps\}.*got Tensor"):
        metric(model, images, targets, torch.rand(2, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`maps` must hold at least one"):
        metric(model, images, targets, {})
    with pytest.raises(ValueError, match=r"`targets` must be class indices in \[0, 3\).*got \[3\]"):
        metric(model, images, torch.tensor([0, 3]), maps)
    with pytest.raises(ValueError, match=r"`targets` must have shape \[2\].*got shape \[3\]"):
        metric(model, images, torch.tensor([0, 1, 2]), maps)
    with pytest.raises(TypeError, match=r"`targets` must be an integer tensor"):
        metric(model, images, torch.tensor([0.0, 1.0]), maps)
    with pytest.raises(
        ValueError, match=r"`baseline` tensor must be broadcastable to the images' shape \[2, 3, 8, 8\]"
    ):
        Faithfulness(baseline=torch.zeros(3, 4, 4))(model, images, targets, maps)
    with pytest.raises(ValueError, match=r"`curves` must be a floating tensor"):
        curve_auc(torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"`maps` must be a real tensor \[B, H, W\], got shape \[8, 8\]"):
        pixel_ranks(torch.zeros(8, 8))
    assert "steps=2" in repr(metric)


def test_a_broadcastable_tensor_baseline_equals_the_constant() -> None:
    model = SmallCNN(num_classes=3).eval()
    images, targets = probes(batch=2)
    maps = {"m": torch.rand(2, SIZE, SIZE)}
    per_channel = faithfulness_curves(model, images, targets, maps, steps=3, baseline=torch.full((3, 1, 1), 0.5))
    constant = faithfulness_curves(model, images, targets, maps, steps=3, baseline=0.5)
    torch.testing.assert_close(per_channel["m"].insertion, constant["m"].insertion, atol=0, rtol=0)
    assert isinstance(per_channel["m"], FaithfulnessCurves)
