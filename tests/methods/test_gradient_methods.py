"""Saliency, SmoothGrad, Integrated Gradients, GradientSHAP: against Captum and shap, ground truth, batching, rules."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import shap
import torch
import torchvision
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel
from captum.attr import Saliency as CaptumSaliency
from models import NaNForBrightImages, RecordsDtypes, RectangleModel, SmallCNN, box_mask
from torch import nn

from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.methods.gradientshap import GradientSHAP
from lightning_sas.methods.ig import IntegratedGradients, integration_rule
from lightning_sas.methods.saliency import Saliency
from lightning_sas.methods.sas import SaS
from lightning_sas.methods.smoothgrad import SmoothGrad
from lightning_sas.scores.metrics import roi_mass, roi_share, spearman

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # `benchmarks` lives next to `tests`, outside the package
    sys.path.insert(0, str(REPOSITORY))

from benchmarks.peers_gradients import compare, markdown_table

SIZE = 32
# Exact peers: the same float32 operations in the same order, up to the summation order of
# the gradients (measured: <= 1e-6 of the map's largest value).
EXACT_RELATIVE = 1e-5
# Monte-Carlo peers (see test_smoothgrad_agrees_with_captum_in_distribution).
DRAWS = 200
SPEARMAN_MARGIN = 0.01


def small_cnn() -> nn.Module:
    return SmallCNN(num_classes=4).eval()


def random_resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=4).eval()


MODELS = {"small_cnn": small_cnn, "resnet18": random_resnet18}


def probe_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four images with different value ranges (SmoothGrad's noise scales with each) and per-image targets."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, SIZE, SIZE, generator=generator) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    return images - 1.0, torch.tensor([0, 3, 1, 2])


def relative_error(ours: torch.Tensor, peer: torch.Tensor) -> float:
    """Largest |ours - peer| of each image over that image's largest |peer|, worst image."""
    scale = peer.flatten(1).abs().amax(dim=1)
    return ((ours - peer).flatten(1).abs().amax(dim=1) / scale).max().item()


# ---------------------------------------------------------------- exact peers


@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_saliency_matches_captum(make_model) -> None:
    model = make_model()
    images, targets = probe_batch()
    peer = CaptumSaliency(model).attribute(images.clone().requires_grad_(True), target=targets, abs=True)
    ours = Saliency().raw_attribution(model, images, targets)
    assert relative_error(ours.abs(), peer) <= EXACT_RELATIVE
    # The map: the largest magnitude over channels (Simonyan et al.), min-max normalised.
    expected = minmax_normalize(peer.amax(dim=1))
    torch.testing.assert_close(Saliency().attribute(model, images, targets), expected, atol=EXACT_RELATIVE, rtol=0)


@pytest.mark.parametrize(
    ("model_name", "rule", "steps"),
    [("small_cnn", "riemann_trapezoid", 8), ("small_cnn", "riemann_middle", 8), ("resnet18", "gausslegendre", 4)],
)
def test_integrated_gradients_matches_captum(model_name: str, rule: str, steps: int) -> None:
    model = MODELS[model_name]()
    images, targets = probe_batch()
    baseline = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    method = IntegratedGradients(baseline=baseline, steps=steps, rule=rule)
    peer, peer_delta = CaptumIntegratedGradients(model).attribute(
        images, baselines=baseline.expand_as(images), target=targets, n_steps=steps, method=rule,
        return_convergence_delta=True,
    )  # fmt: skip
    assert relative_error(method.raw_attribution(model, images, targets), peer) <= EXACT_RELATIVE
    expected = minmax_normalize(peer.sum(dim=1).clamp_min(0))
    torch.testing.assert_close(method.attribute(model, images, targets), expected, atol=EXACT_RELATIVE, rtol=0)
    # The completeness gap is Captum's convergence delta: sum of attributions - (f(x) - f(b)).
    gap = method.completeness_gap(model, images, targets)
    torch.testing.assert_close(gap, peer_delta.float(), atol=1e-4 * peer.abs().sum().item(), rtol=0)


def test_integration_rules_are_captums() -> None:
    from captum.attr._utils.approximation_methods import approximation_parameters

    for rule in ["riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]:
        step_sizes, alphas = approximation_parameters(rule)
        for steps in (2, 7, 32):
            assert integration_rule(rule, steps) == (alphas(steps), step_sizes(steps)), (rule, steps)


def test_blur_and_zero_baselines() -> None:
    """``"blur"`` is exactly SaS's baseline; both named baselines give Captum's IG for that baseline."""
    model = small_cnn()
    images, targets = probe_batch()
    blurred = SaS().baseline(images)
    assert torch.equal(IntegratedGradients(baseline="blur").baseline_for(images), blurred)
    for name, baseline in (("blur", blurred), ("zero", torch.zeros_like(images))):
        ours = IntegratedGradients(baseline=name, steps=8).raw_attribution(model, images, targets)
        peer = CaptumIntegratedGradients(model).attribute(images, baselines=baseline, target=targets, n_steps=8)
        assert relative_error(ours, peer) <= EXACT_RELATIVE, name


def test_completeness_gap() -> None:
    """Gauss-Legendre at 32 points nearly closes the gap; Captum's trapezoid weights leave out Δ/steps.

    Measured on this model: Gauss-Legendre's gap <= 0.5% of |Δ| at 32 points, 2-4% at 2 points.
    """
    model = small_cnn()
    images, targets = probe_batch()
    with torch.no_grad():
        change = (model(images) - model(SaS().baseline(images))).gather(1, targets[:, None])[:, 0]
    coarse = IntegratedGradients(steps=2).completeness_gap(model, images, targets)
    fine = IntegratedGradients(steps=32).completeness_gap(model, images, targets)
    assert (fine.abs() <= 0.02 * change.abs()).all(), (fine, change)
    assert fine.abs().sum() < 0.2 * coarse.abs().sum(), (fine, coarse)
    trapezoid = IntegratedGradients(steps=32, rule="riemann_trapezoid").completeness_gap(model, images, targets)
    assert ((trapezoid + change / 32).abs() <= 0.02 * change.abs()).all(), (trapezoid, change)


# ---------------------------------------------------------------- Monte-Carlo peers, compared in distribution


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return spearman(a, b).mean().item()


def captum_smoothgrad_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seed: int) -> torch.Tensor:
    """NoiseTunnel(Saliency) smoothgrad with our noise scale (Captum's ``stdevs`` is one number: one call per image)."""
    torch.manual_seed(seed)  # Captum draws its noise from the global stream
    std = SmoothGrad().noise_std(images)
    tunnel = NoiseTunnel(CaptumSaliency(model))
    maps = [
        tunnel.attribute(
            images[i : i + 1], nt_type="smoothgrad", nt_samples=DRAWS, stdevs=float(std[i]), target=int(targets[i])
        )
        for i in range(images.shape[0])
    ]
    return torch.cat(maps).amax(dim=1)


def test_smoothgrad_agrees_with_captum_in_distribution() -> None:
    """Ours and Captum's NoiseTunnel(Saliency) are two Monte-Carlo estimates of the same expectation.

    Two runs of Captum with different seeds agree to a mean Spearman correlation of ~0.98 at
    200 samples (sampling noise); ours must agree with Captum as well as Captum agrees with
    itself, minus SPEARMAN_MARGIN = 0.01. Why that is tight enough: the peer-vs-peer value
    moves by ~0.003 between seeds, while a real error moves ours-vs-peer far more (measured:
    Captum vs Captum 0.982, ours vs Captum 0.981 and 0.982; noise at half the right scale gives
    0.925, and that case is checked below to fail).
    """
    model = small_cnn()
    images, targets = probe_batch()
    peer_a = captum_smoothgrad_maps(model, images, targets, seed=10)
    peer_b = captum_smoothgrad_maps(model, images, targets, seed=11)
    ours = SmoothGrad(samples=DRAWS, seed=1).raw_attribution(model, images, targets).amax(dim=1)
    peer_agreement = mean_spearman(peer_a, peer_b)
    assert peer_agreement > 0.9, "the peer itself is too noisy at this sample count to compare against"
    assert mean_spearman(ours, peer_a) >= peer_agreement - SPEARMAN_MARGIN
    assert mean_spearman(ours, peer_b) >= peer_agreement - SPEARMAN_MARGIN
    # The test can fail: the wrong noise scale is caught.
    wrong = SmoothGrad(samples=DRAWS, noise_level=0.075, seed=1).raw_attribution(model, images, targets).amax(dim=1)
    assert mean_spearman(wrong, peer_a) < peer_agreement - SPEARMAN_MARGIN


def images_with_distinct_predictions(model: nn.Module, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images whose predicted classes differ (shap explains the top-ranked output only)."""
    pool = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 4 - 2
    with torch.no_grad():
        # A random network predicts one class for every random image; centring its logits over
        # the pool spreads the predictions over the classes.
        model.head[-1].bias -= model(pool).mean(dim=0)
        predicted = model(pool).argmax(dim=1)
    chosen = [int(torch.nonzero(predicted == label)[0]) for label in predicted.unique()[:count]]
    assert len(chosen) >= 2, "the pool should hold images of at least two predicted classes"
    return pool[chosen], predicted[chosen]


def test_gradientshap_agrees_with_captum_and_shap_in_distribution() -> None:
    """Ours vs Captum's GradientShap and shap's GradientExplainer on a fixed background, as for SmoothGrad.

    Measured at 200 draws: Captum vs Captum 0.990, shap vs shap 0.993 (mean Spearman of the
    channel sums), ours vs either 0.990-0.993; a zero background instead of the right one
    gives 0.68-0.69 and is checked to fail.
    """
    model = small_cnn()
    images, targets = images_with_distinct_predictions(model, 3)
    background = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6)) * 2

    def captum(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        explainer = CaptumGradientShap(model)
        return explainer.attribute(images, baselines=background, n_samples=DRAWS, target=targets).sum(dim=1)

    def shap_values(seed: int) -> torch.Tensor:
        numpy_state = np.random.get_state()  # shap reseeds NumPy's global stream: leave it as found
        try:
            values, ranked = shap.GradientExplainer(model, background).shap_values(
                images, nsamples=DRAWS, rseed=seed, ranked_outputs=1
            )
        finally:
            np.random.set_state(numpy_state)
        assert torch.equal(torch.as_tensor(ranked[:, 0]).long(), targets)
        return torch.from_numpy(np.asarray(values)).float()[..., 0].sum(dim=1)

    ours = GradientSHAP(background=background, samples=DRAWS, seed=1).raw_attribution(model, images, targets).sum(1)
    for peer_a, peer_b in ((captum(10), captum(11)), (shap_values(10), shap_values(11))):
        peer_agreement = mean_spearman(peer_a, peer_b)
        assert peer_agreement > 0.9
        assert mean_spearman(ours, peer_a) >= peer_agreement - SPEARMAN_MARGIN
        assert mean_spearman(ours, peer_b) >= peer_agreement - SPEARMAN_MARGIN
    wrong_background = GradientSHAP(background=torch.zeros(1, 3, SIZE, SIZE), samples=DRAWS, seed=1)
    wrong = wrong_background.raw_attribution(model, images, targets).sum(dim=1)
    assert mean_spearman(wrong, peer_a) < peer_agreement - SPEARMAN_MARGIN


# ---------------------------------------------------------------- planted ground truth


def off_centre_box(size: int) -> tuple[int, int, int, int]:
    return (size * 3 // 16, size * 8 // 16, size * 9 // 16, size * 15 // 16)


def default_methods() -> dict[str, AttributionMethod]:
    return {
        "saliency": Saliency(),
        "smoothgrad": SmoothGrad(),
        "ig": IntegratedGradients(),
        "gradientshap": GradientSHAP(),
    }


# Top-|R| share (roi_share, min over the two images), measured at default settings; the same at
# logit scales 0.01, 1 and 100. Bounds: one pixel of |R| below the measurement (|R| = 120 at 32 px, 480 at
# 64 px). Chance level is 0.117. Saliency and SmoothGrad miss only the box's corner pixels (the
# Laplacian cross does not reach them: zero gradient, tied with the outside). IG and
# GradientSHAP clip negative evidence to 0 (sign "positive"), which ties it with the outside;
# GradientSHAP with the two probes as background compares two equally textured images.
ROI_SHARE_AT_LEAST = {
    32: {"saliency": 0.958, "smoothgrad": 0.958, "ig": 0.82, "gradientshap": 0.52},
    64: {"saliency": 0.99, "smoothgrad": 0.99, "ig": 0.89, "gradientshap": 0.54},
}


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_rectangle(size: int) -> None:
    box = off_centre_box(size)
    # One logit scale: these maps are linear in the logit (a gradient, or a gradient times a
    # fixed difference, scales with it) and min-max normalisation divides the factor out
    # (test_maps_do_not_depend_on_the_logit_scale).
    model = RectangleModel(size, box)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    targets = torch.ones(2, dtype=torch.long)
    roi = box_mask(size, box).expand(2, -1, -1)
    for name, method in default_methods().items():
        maps = method.attribute(model, images, targets)
        # The score's gradient is exactly zero outside the box, so all of every map's mass is inside.
        assert roi_mass(maps, roi).min().item() >= 1 - 1e-6, name
        assert roi_share(maps, roi).min().item() >= ROI_SHARE_AT_LEAST[size][name], name


def test_absolute_sign_ranks_negative_evidence_too() -> None:
    """The rectangle's texture raises the score and a blur lowers it, so positive IG / GradientSHAP
    values tie some in-box pixels with the outside (README: 0.829 / 0.531 at 32 px); the magnitude
    ranks every pixel that moves the score, whatever its sign (measured 0.967 for both)."""
    size = 32
    box = off_centre_box(size)
    model = RectangleModel(size, box)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    targets = torch.ones(2, dtype=torch.long)
    roi = box_mask(size, box).expand(2, -1, -1)
    for positive, absolute in (
        (IntegratedGradients(), IntegratedGradients(sign="absolute")),
        (GradientSHAP(), GradientSHAP(sign="absolute")),
    ):
        assert (positive.sign, absolute.sign) == ("positive", "absolute")
        shares = [
            roi_share(method.attribute(model, images, targets), roi).min().item() for method in (positive, absolute)
        ]
        assert shares[1] >= 0.95 and shares[1] > shares[0] + 0.1, (positive.name, shares)
    with pytest.raises(ValueError, match="`sign` must be 'positive' or 'absolute', got 'both'"):
        IntegratedGradients(sign="both")


def test_maps_do_not_depend_on_the_logit_scale() -> None:
    """Scaling the logits by 0.01 or 100 leaves every map as it is (measured: at most 4e-7 apart)."""
    size = 32
    box = off_centre_box(size)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    targets = torch.ones(2, dtype=torch.long)
    for name, method in default_methods().items():
        small, large = (method.attribute(RectangleModel(size, box, scale), images, targets) for scale in (0.01, 100.0))
        torch.testing.assert_close(small, large, atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------- batching, chunking, randomness


def seeded_methods(background: torch.Tensor) -> dict[str, AttributionMethod]:
    return {
        "saliency": Saliency(),
        "smoothgrad": SmoothGrad(samples=6, seed=3),
        "ig": IntegratedGradients(steps=6),
        "gradientshap": GradientSHAP(background=background, samples=6, stdevs=0.1, seed=3),
    }


@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "ig", "gradientshap"])
def test_batched_equals_one_by_one_and_chunked(name: str) -> None:
    model = small_cnn()
    images, targets = probe_batch()
    method = seeded_methods(torch.randn(5, 3, SIZE, SIZE))[name]
    batched = method.attribute(model, images, targets)
    singles = torch.cat([method.attribute(model, images[i : i + 1], targets[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)
    method.max_batch = 5  # uneven chunks that split images' variants
    torch.testing.assert_close(method.attribute(model, images, targets), batched, atol=1e-5, rtol=0)


def test_probes_background_depends_on_the_set_and_needs_two_images() -> None:
    model = small_cnn()
    images, targets = probe_batch()
    method = GradientSHAP(samples=6)
    whole = method.attribute(model, images, targets)
    half = method.attribute(model, images[:2], targets[:2])
    assert (whole[:2] - half).abs().max().item() > 0.01, "the background is the set: another set, other maps"
    with pytest.raises(ValueError, match=r"`background='probes'` needs at least 2 images.*got 1"):
        method.attribute(model, images[:1], targets[:1])


@pytest.mark.parametrize("rows", [[0], [1, 2], [3, 3], [2, 0, 1, 3]], ids=["one", "two", "padded", "permuted"])
def test_probe_background_bound_to_the_set_gives_the_sets_maps_on_any_shard(rows: list[int]) -> None:
    """DDP shards: a shard (one image, or padding duplicates) explained with the bound method gets
    exactly the maps of the whole set explained with ``background='probes'``."""
    model = small_cnn()
    images, targets = probe_batch()
    method = GradientSHAP(samples=6, stdevs=0.1, seed=3)
    whole = method.attribute(model, images, targets)
    with torch.inference_mode():  # as the probe set comes from Lightning's validation loop
        bound = method.bind_probe_set(images.clone())
    shard = torch.tensor(rows)
    torch.testing.assert_close(bound.attribute(model, images[shard], targets[shard]), whole[shard], atol=0, rtol=0)
    assert method.background == "probes" and torch.equal(bound.background, images)  # a copy, self unchanged


def test_bind_probe_set_keeps_methods_that_do_not_depend_on_the_set() -> None:
    images, _ = probe_batch()
    for method in [*seeded_methods(torch.randn(5, 3, SIZE, SIZE)).values(), SaS()]:
        assert method.bind_probe_set(images) is method
    with pytest.raises(ValueError, match=r"`images` must hold at least 2 probes.*got 1"):
        GradientSHAP().bind_probe_set(images[:1])
    with pytest.raises(TypeError, match=r"`images` must be a floating tensor \[N, C, H, W\].*torch.int64"):
        GradientSHAP().bind_probe_set(torch.zeros(2, 3, 4, 4, dtype=torch.long))


def global_rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


@pytest.mark.parametrize("name", ["smoothgrad", "gradientshap"])
def test_randomised_methods_use_only_their_seed(name: str) -> None:
    model = small_cnn()
    images, targets = probe_batch()
    background = torch.randn(5, 3, SIZE, SIZE)
    before = global_rng_states()
    first = seeded_methods(background)[name].attribute(model, images, targets)
    torch_state, numpy_state, python_state = global_rng_states()
    assert torch.equal(torch_state, before[0]), "the torch CPU RNG stream moved"
    assert numpy_state[0] == before[1][0] and np.array_equal(numpy_state[1], before[1][1])
    assert numpy_state[2:] == before[1][2:], "the NumPy RNG stream moved"
    assert python_state == before[2], "the Python RNG stream moved"
    torch.manual_seed(123)  # the global stream does not matter either
    again = seeded_methods(background)[name].attribute(model, images, targets)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    other = seeded_methods(background)[name]
    other.seed = 4
    assert (other.attribute(model, images, targets) - first).abs().amax().item() > 0.01


@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "ig", "gradientshap"])
def test_same_maps_under_no_grad_inference_mode_and_for_a_training_model(name: str) -> None:
    model = small_cnn()
    images, targets = probe_batch()
    method = seeded_methods(torch.randn(5, 3, SIZE, SIZE))[name]
    plain = method.attribute(model, images, targets)
    model.train()
    with torch.inference_mode():
        inference_images, inference_targets = images.clone(), targets.clone()
        under_inference = method.attribute(model, inference_images, inference_targets)
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(method.attribute(model, images, targets), plain, atol=0, rtol=0)
    torch.testing.assert_close(under_inference.clone(), plain, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "ig", "gradientshap"])
def test_enclosing_autocast_reaches_the_model(name: str) -> None:
    model = RecordsDtypes(num_classes=4).eval()
    images, targets = probe_batch()
    method = seeded_methods(torch.randn(5, 3, SIZE, SIZE))[name]
    full_precision_baseline = SaS().baseline(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = method.attribute(model, images, targets)
        if name == "ig":
            # The blurred baseline is an input: computed in float32, not in the autocast dtype.
            assert torch.equal(IntegratedGradients().baseline_for(images), full_precision_baseline)
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    assert maps.min().item() >= 0.0 and maps.max().item() <= 1.0
    assert model.seen and set(model.seen) == {torch.bfloat16}


# ---------------------------------------------------------------- non-finite outputs


@pytest.mark.parametrize("how", ["multiply", "masked"])
@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "ig", "gradientshap"])
def test_nan_logits_for_one_image(name: str, how: str) -> None:
    """That image's map (and raw values) are all NaN; the others are the maps of a batch without it."""
    model = NaNForBrightImages(how, num_classes=4).eval()
    images, targets = probe_batch()
    images[1] += 10.0  # mean > 5: NaN logits for the image and its variants
    method = seeded_methods(torch.randn(5, 3, SIZE, SIZE))[name]
    maps = method.attribute(model, images, targets)
    assert bool(torch.isnan(maps[1]).all())
    assert bool(torch.isfinite(maps[[0, 2, 3]]).all())
    keep = [0, 2, 3]
    torch.testing.assert_close(maps[keep], method.attribute(model, images[keep], targets[keep]), atol=1e-5, rtol=0)
    raw = method.raw_attribution(model, images, targets)  # type: ignore[attr-defined]
    assert bool(torch.isnan(raw[1]).all()) and bool(torch.isfinite(raw[keep]).all())


# ---------------------------------------------------------------- arguments and declarations


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Saliency(max_batch=0), ValueError, r"`max_batch` must be None or an integer >= 1, got 0"),
        (lambda: SmoothGrad(samples=0), ValueError, r"`samples` must be an integer >= 1, got 0"),
        (lambda: SmoothGrad(samples=2.5), ValueError, r"`samples` must be an integer >= 1, got 2.5"),
        (lambda: SmoothGrad(noise_level=-0.1), ValueError, r"`noise_level` must be a number >= 0, got -0.1"),
        (lambda: SmoothGrad(noise_level=float("nan")), ValueError, r"`noise_level` must be a number >= 0, got nan"),
        (lambda: SmoothGrad(seed=-1), ValueError, r"`seed` must be an integer >= 0, got -1"),
        (lambda: IntegratedGradients(steps=1, rule="riemann_left"), ValueError, r"`steps` must be an integer >= 2"),
        (lambda: IntegratedGradients(steps=0), ValueError, r"`steps` must be an integer >= 1, got 0"),
        (
            lambda: IntegratedGradients(rule="simpson"),
            ValueError,
            r"`rule` must be one of .*'simpson'",
        ),
        (lambda: IntegratedGradients(baseline="mean"), TypeError, r"`baseline` must be 'blur', 'zero' or a floating"),
        (lambda: IntegratedGradients(baseline=torch.zeros(3, dtype=torch.long)), TypeError, r"`baseline` tensor"),
        (lambda: IntegratedGradients(blur_kernel=4), ValueError, r"`blur_kernel` must be odd .*got 4"),
        (lambda: GradientSHAP(background="training"), TypeError, r"`background` must be 'probes' or a floating"),
        (lambda: GradientSHAP(background=torch.zeros(3, 8, 8)), TypeError, r"`background` tensor .*\[3, 8, 8\]"),
        (lambda: GradientSHAP(stdevs=-1.0), ValueError, r"`stdevs` must be a number >= 0, got -1.0"),
        (lambda: GradientSHAP(samples=True), ValueError, r"`samples` must be an integer >= 1, got True"),
    ],
)
def test_bad_arguments(make, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_tensor_arguments_that_do_not_fit_the_images() -> None:
    model = small_cnn()
    images, targets = probe_batch()
    with pytest.raises(ValueError, match=r"`baseline` of shape \[3, 16, 16\] does not broadcast .*\[4, 3, 32, 32\]"):
        IntegratedGradients(baseline=torch.zeros(3, 16, 16)).attribute(model, images, targets)
    with pytest.raises(ValueError, match=r"`background` images have shape \[3, 16, 16\].*\[3, 32, 32\]"):
        GradientSHAP(background=torch.zeros(2, 3, 16, 16)).attribute(model, images, targets)


def test_names_signs_and_passes() -> None:
    methods = [Saliency(), SmoothGrad(samples=7), IntegratedGradients(steps=9), GradientSHAP(samples=11)]
    assert [m.name for m in methods] == ["saliency", "smoothgrad", "ig", "gradientshap"]
    assert [m.sign for m in methods] == ["absolute", "absolute", "positive", "positive"]
    assert [m.passes_per_probe() for m in methods] == [1, 7, 9, 11]
    # Tensors are shown by shape, so a background set does not fill a log line.
    shown = repr(GradientSHAP(background=torch.zeros(8, 3, 16, 16), samples=3))
    assert shown == (
        "GradientSHAP(background=Tensor[8, 3, 16, 16], samples=3, stdevs=0.0, max_batch=None, seed=0, sign='positive')"
    )
    # passes_per_probe is what the model really sees: count the images forwarded.
    model = SmallCNN(num_classes=4).eval()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    images, targets = probe_batch()
    for method in methods:
        seen.clear()
        method.attribute(model, images, targets)
        assert sum(seen) == 4 * method.passes_per_probe(), method.name


def test_peer_benchmark_rows() -> None:
    """The speed comparison runs every method and peer and reports consistent rows (timings not asserted)."""
    model = SmallCNN(num_classes=3).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    rows = compare(model, images, targets)
    assert [(row["method"], row["peer"]) for row in rows] == [
        ("saliency", "captum.Saliency"),
        ("smoothgrad", "captum.NoiseTunnel(Saliency)"),
        ("ig", "captum.IntegratedGradients"),
        ("gradientshap", "captum.GradientShap"),
        ("gradientshap", "shap.GradientExplainer"),
    ]
    for row in rows:
        assert row["ours_s"] > 0 and row["peer_s"] > 0
        assert row["ratio"] == pytest.approx(row["peer_s"] / row["ours_s"])
    assert markdown_table(rows).count("\n") == len(rows) + 1
