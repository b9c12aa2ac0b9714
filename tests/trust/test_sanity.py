"""Model-parameter randomisation sanity check: flags, model untouched, stage order, Quantus' MPRT.

Run as a script (``.venv/bin/python tests/trust/test_sanity.py``) it prints the measurements behind
``lightning_sas.trust.sanity.DEFAULT_THRESHOLD``.
"""

from __future__ import annotations

import copy
import random
import statistics
import sys
import time

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lit_models import LitClassifier, corner_dataset
from models import SmallCNN
from torch import Tensor, nn

from lightning_sas.methods import AttributionMethod, GradCAM, Saliency, SaS
from lightning_sas.methods.base import check_logits, minmax_normalize
from lightning_sas.trust import randomisation
from lightning_sas.trust.randomisation import randomization_stages
from lightning_sas.trust.sanity import DEFAULT_THRESHOLD, ImageEdges, SanityResult, cascading_randomization

SIZE = 32
CHEAP_SAS = {"iterations": 10, "num_masks": 6}


def corner_probes(count: int = 8, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Held-out corner images (class 1 = bright top-left quadrant) and their labels."""
    images, labels, _ = corner_dataset(count, SIZE, seed=seed).tensors
    return images, labels


def train_corner_cnn(model: nn.Module | None = None, steps: int = 60) -> nn.Module:
    """A SmallCNN (or ``model``) trained on the corner task: it needs its weights to solve it."""
    model = SmallCNN(num_classes=2) if model is None else model
    images, labels, _ = corner_dataset(128, SIZE, seed=0).tensors
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (32,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    return model.eval()


def cnn_accuracy(model: nn.Module) -> float:
    images, labels = corner_probes(64, seed=5)
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: a second intra-op thread buys nothing, and on a busy machine its
    spinning made each training step 30x slower (0.3 s instead of 0.01 s, measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corner_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = train_corner_cnn()
    accuracy = cnn_accuracy(model)
    assert accuracy >= 0.95, f"the corner CNN must solve its task (accuracy {accuracy:.2f})"
    return model


# ------------------------------------------------------------------ verdicts


def test_weight_independent_control_is_flagged_at_every_stage(corner_cnn: nn.Module) -> None:
    images, labels = corner_probes()
    result = cascading_randomization(corner_cnn, images, labels, {"edges": ImageEdges()})
    assert result.flagged == ["edges"]
    torch.testing.assert_close(result.similarity["edges"], torch.ones(len(result.stages)))
    assert result.per_probe["edges"].shape == (len(result.stages), len(images))


def test_gradcam_and_sas_on_a_trained_model_are_not_flagged(corner_cnn: nn.Module) -> None:
    images, labels = corner_probes()
    methods = {
        "gradcam": GradCAM(),
        "sas": SaS(**CHEAP_SAS),
        "sas_scale_free": SaS(**CHEAP_SAS, objective="scale_free"),
        "edges": ImageEdges(),
    }
    result = cascading_randomization(corner_cnn, images, labels, methods, stages=4)
    assert isinstance(result, SanityResult) and result.threshold == DEFAULT_THRESHOLD
    assert result.flagged == ["edges"]
    for name in ("gradcam", "sas_scale_free"):
        similarity = result.similarity[name]
        assert similarity.shape == (4,)
        # Fully randomised, the maps no longer resemble the trained ones (measured at seed 0:
        # Grad-CAM -0.06, scale-free SaS +0.12); a copy that was not randomised would give 1.0.
        assert similarity[-1].item() < 0.5, (name, similarity)
    # SaS's paper objective keeps more of its shape on this small-logit model (total variation
    # weighs more against its small scores; measured 0.56-0.63 over the stages), below the flag.
    assert result.similarity["sas"][-1].item() < DEFAULT_THRESHOLD
    # The same call with a threshold below the measured similarities flags them too.
    strict = SanityResult(result.stages, result.similarity, result.per_probe, threshold=-1.0)
    assert set(strict.flagged) == {"gradcam", "sas", "sas_scale_free", "edges"}


class PartlyImageOnly:
    """A method whose map is partly blind to the weights: ``image_share`` x the image's own edges
    (:class:`ImageEdges`) + the rest x the input gradient (:class:`Saliency`), min-max normalised."""

    def __init__(self, image_share: float) -> None:
        self.image_share = image_share

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        edges = ImageEdges().attribute(model, images, targets)
        gradient = Saliency().attribute(model, images, targets)
        return minmax_normalize(self.image_share * edges + (1 - self.image_share) * gradient)


def test_a_partly_model_independent_method_is_flagged_and_a_real_one_passes(corner_cnn: nn.Module) -> None:
    images, labels = corner_probes()
    methods = {f"edges {share:.0%}": PartlyImageOnly(share) for share in (0.0, 0.5, 0.9)}
    result = cascading_randomization(corner_cnn, images, labels, methods, stages=4)
    # Final-stage similarity measured at seeds 0-2: 0.06-0.19 (the gradient alone), 0.45-0.48
    # (half edges), 0.974-0.975 (90% edges; 80% gives 0.89, just below the threshold).
    assert result.flagged == ["edges 90%"]
    final = {name: values[-1].item() for name, values in result.similarity.items()}
    assert final["edges 0%"] < 0.5 and final["edges 0%"] < final["edges 50%"] < final["edges 90%"]
    # Not the exact-1 control: the weights do move this map, only too little to matter.
    assert DEFAULT_THRESHOLD < final["edges 90%"] < 0.99
    assert bool((result.per_probe["edges 90%"][-1] < 1.0).all())


# ------------------------------------------------------------------ nothing leaks


def test_model_flags_and_global_rng_are_untouched(corner_cnn: nn.Module) -> None:
    model = copy.deepcopy(corner_cnn).train()
    model.features[1].eval()  # a mix of flags, restored one by one
    model.features[0].weight.requires_grad_(False)
    for parameter in model.head.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    flags = [module.training for module in model.modules()]
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    images, labels = corner_probes(4)
    methods = {"gradcam": GradCAM(model.features[4]), "sas": SaS(iterations=2, num_masks=3)}
    result = cascading_randomization(model, images, labels, methods, stages=2, seed=7)

    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.random.get_state()[1].tolist() == rng[1][1].tolist() and np.random.get_state()[2] == rng[1][2]
    assert random.getstate() == rng[2]
    assert set(model.state_dict()) == set(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [module.training for module in model.modules()] == flags
    assert [parameter.requires_grad for parameter in model.parameters()] == requires_grad
    for parameter, grad in zip(model.parameters(), grads, strict=True):
        assert (parameter.grad is None) == (grad is None) and (grad is None or torch.equal(parameter.grad, grad))
    # The module-valued Grad-CAM layer was followed into the copy (a foreign module would fail).
    assert result.similarity["gradcam"].shape == (2,)


def test_seeded_and_independent_of_the_stage_count(corner_cnn: nn.Module) -> None:
    images, labels = corner_probes(4)
    methods = {"gradcam": GradCAM()}
    first = cascading_randomization(corner_cnn, images, labels, methods, stages=2, seed=3)
    again = cascading_randomization(corner_cnn, images, labels, methods, stages=2, seed=3)
    finer = cascading_randomization(corner_cnn, images, labels, methods, stages=None, seed=3)
    other = cascading_randomization(corner_cnn, images, labels, methods, stages=2, seed=4)
    torch.testing.assert_close(first.per_probe["gradcam"], again.per_probe["gradcam"], equal_nan=True)
    # A module's random weights come from (seed, name): the fully random model is the same.
    torch.testing.assert_close(first.per_probe["gradcam"][-1], finer.per_probe["gradcam"][-1], equal_nan=True)
    assert not torch.allclose(first.per_probe["gradcam"][-1], other.per_probe["gradcam"][-1], equal_nan=True)


class AuditDuringFit(L.Callback):
    """Runs the sanity check on the LightningModule from inside the validation loop."""

    def __init__(self) -> None:
        self.results: list[SanityResult] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, labels = corner_probes(4)
        before = {key: value.clone() for key, value in pl_module.state_dict().items()}
        self.results.append(
            cascading_randomization(pl_module, images, labels, {"gradcam": GradCAM(), "edges": ImageEdges()}, stages=2)
        )
        assert all(torch.equal(value, before[key]) for key, value in pl_module.state_dict().items())


def test_lightning_module_attached_to_a_trainer_is_copied_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[object] = []

    def record_deepcopy(self: L.Trainer, memo: dict) -> L.Trainer:
        copied.append(self)
        return self

    # Any deep copy of a Trainer (the whole run: loaders, optimisers, the model again) shows here.
    monkeypatch.setattr(L.Trainer, "__deepcopy__", record_deepcopy, raising=False)
    module = LitClassifier(num_classes=2)
    audit = AuditDuringFit()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        callbacks=[audit],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    # Lightning's own __getstate__ drops `_trainer`; a reference held elsewhere in the module
    # tree (here a submodule's attribute) is only protected by the copy sharing the trainer.
    trainer.fit(module, *[torch.utils.data.DataLoader(corner_dataset(16, SIZE), batch_size=8)] * 2)
    module.net.run = trainer
    assert module.trainer is trainer
    result = cascading_randomization(module, *corner_probes(4), {"edges": ImageEdges()}, stages=1)

    assert len(audit.results) == 1 and audit.results[0].flagged == ["edges"]
    assert result.flagged == ["edges"]
    assert copied == []
    assert module.trainer is trainer and module.net.run is trainer


# ------------------------------------------------------------------ stages


class HeadRegisteredFirst(nn.Module):
    """Registration order (head, conv) differs from execution order (conv, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.norm = nn.BatchNorm2d(4, affine=False)  # running statistics only: still randomised
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.norm(self.conv(images)).mean(dim=(2, 3)))


def test_stages_run_from_the_output_to_the_input() -> None:
    model = SmallCNN(num_classes=2)
    example = torch.randn(2, 3, SIZE, SIZE)
    every = ["head.3", "features.5", "features.4", "features.1", "features.0"]
    assert randomization_stages(model, example, stages=None) == [every[:k] for k in range(1, 6)]
    assert randomization_stages(model, example, stages=2) == [every[:3], every]  # ceil(5/2) = 3
    assert randomization_stages(model, example, stages=4) == [every[:2], every[:3], every[:4], every]
    assert randomization_stages(model, example, stages=9) == randomization_stages(model, example, stages=None)
    # The dry forward decides, not the registration order (which is the fallback).
    swapped = HeadRegisteredFirst()
    assert randomization_stages(swapped, example, stages=None)[-1] == ["head", "norm", "conv"]
    assert randomization_stages(swapped, None, stages=None)[-1] == ["conv", "norm", "head"]
    assert randomization_stages(torchvision.models.resnet18(num_classes=2), example, stages=4)[0][0] == "fc"


def test_stage_randomises_exactly_its_modules(corner_cnn: nn.Module) -> None:
    """Stage k re-initialises the last k modules and nothing else: the weights each call sees."""
    images, labels = corner_probes(4)
    seen: list[dict[str, Tensor]] = []

    class Snapshot:
        """A 'method' that records the model's weights it is given (and returns the edges)."""

        def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            seen.append({key: value.clone() for key, value in model.state_dict().items()})
            return ImageEdges().attribute(model, images, targets)

    cascading_randomization(corner_cnn, images, labels, {"snapshot": Snapshot()}, stages=None)
    trained, *stages = seen
    order = ["head.3", "features.5", "features.4", "features.1", "features.0"]
    for count, weights in enumerate(stages, start=1):
        for key, value in weights.items():
            randomised = key.rsplit(".", 1)[0].removeprefix("model.") in order[:count]
            assert torch.equal(value, trained[key]) != randomised, (count, key)


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stages": 0}, ValueError, r"`stages` must be a positive integer.*got 0"),
        ({"stages": 2.0}, ValueError, r"`stages`.*got 2.0"),
        ({"threshold": 1.5}, ValueError, r"`threshold` must be a number in \[-1, 1\].*got 1.5"),
        ({"seed": -1}, ValueError, r"`seed` must be a non-negative integer, got -1"),
        ({"methods": {}}, ValueError, r"`methods` must name at least one"),
        ({"methods": [GradCAM()]}, TypeError, r"`methods` must be a mapping.*got list"),
        ({"methods": {"x": "gradcam"}}, TypeError, r"`methods`\['x'\] must have an `attribute"),
        ({"images": torch.zeros(2, 3, 8)}, ValueError, r"`images` must be 4-D"),
        ({"images": [1.0]}, TypeError, r"`images` must be a floating-point tensor"),
        ({"targets": torch.zeros(3, dtype=torch.long)}, ValueError, r"`targets` must have shape \[2\]"),
        ({"output": 1.5}, TypeError, r"`output` must be None"),
        ({"model": "resnet"}, TypeError, r"`model` must be a torch.nn.Module"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    arguments = {
        "model": SmallCNN(num_classes=2),
        "images": torch.randn(2, 3, 8, 8),
        "targets": torch.tensor([0, 1]),
        "methods": {"edges": ImageEdges()},
    } | kwargs
    options = {key: arguments.pop(key) for key in ("stages", "threshold", "seed", "output") if key in arguments}
    with pytest.raises(error, match=match):
        cascading_randomization(
            arguments["model"], arguments["images"], arguments["targets"], arguments["methods"], **options
        )


def test_model_without_parameters_and_predicted_targets() -> None:
    with pytest.raises(ValueError, match="has no parameters to randomise"):
        randomization_stages(nn.Flatten(), None)
    model = SmallCNN(num_classes=3)
    images = torch.randn(2, 3, 8, 8)
    result = cascading_randomization(model, images, None, {"gradcam": GradCAM()}, stages=1)
    assert result.per_probe["gradcam"].shape == (1, 2)


# ------------------------------------------------------------------ Quantus' MPRT


def quantus_mprt(model: nn.Module, images: Tensor, labels: Tensor, method, seed: int) -> dict[str, list[float]]:
    """Quantus' cascading MPRT (top_down) with Spearman on the same maps, as lists per layer."""
    quantus = pytest.importorskip("quantus")

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs) -> np.ndarray:
        return method.attribute(model, torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()

    metric = quantus.MPRT(
        layer_order="top_down",  # cascading, output end first
        similarity_func=quantus.similarity_func.correlation_spearman,
        seed=seed,
        abs=False,
        normalise=False,  # our maps are already in [0, 1]; Spearman ignores scale
        disable_warnings=True,
        display_progressbar=False,
    )
    scores = metric(
        model=model,
        x_batch=images.numpy(),
        y_batch=labels.numpy(),
        a_batch=None,
        explain_func=explain,
        device="cpu",
        batch_size=len(images),
    )
    return {layer: values for layer, values in scores.items() if layer != "original"}


# scipy's spearmanr warns for a constant (dead) randomised map, which it scores NaN.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("method", [GradCAM(), SaS(iterations=4, num_masks=4)], ids=["gradcam", "sas"])
def test_agrees_with_quantus_mprt(corner_cnn: nn.Module, method, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("quantus")
    images, labels = corner_probes(6)
    theirs = quantus_mprt(corner_cnn, images, labels, method, seed=42)
    # Quantus draws each layer's weights after torch.manual_seed(seed + 1) on the global RNG;
    # we seed a forked RNG per (seed, name). Giving ours Quantus' per-layer seed makes the
    # random weights identical, so the comparison can be exact: any difference left is in
    # the layers, their order, the cascade, the targets or the score.
    with monkeypatch.context() as patch:
        patch.setattr(randomisation, "_module_seed", lambda seed, name: seed + 1)
        ours = cascading_randomization(corner_cnn, images, labels, {"m": method}, stages=None, seed=42)
    assert [stage[-1] for stage in ours.stages] == list(theirs)  # same modules, same order
    expected = torch.tensor(list(theirs.values()), dtype=torch.float32)
    # Quantus gives NaN for a randomised map that became constant; we score it 0 (no ranking
    # in common with the trained map).
    expected = torch.where(expected.isnan() & ours.per_probe["m"].eq(0), 0.0, expected)
    # Tolerance: float32 maps ranked in float32 (ours) and float64 (scipy) differ by rounding.
    torch.testing.assert_close(ours.per_probe["m"], expected, atol=1e-5, rtol=0, equal_nan=True)
    # With our own seeding the weights differ, so only the verdict is compared: both put the
    # fully randomised model's maps below the threshold.
    own = cascading_randomization(corner_cnn, images, labels, {"m": method}, stages=None)
    quantus_final = float(np.median(np.nan_to_num(list(theirs.values())[-1], nan=0.0)))
    assert len(own.stages) == len(theirs)
    assert own.similarity["m"][-1] < DEFAULT_THRESHOLD and quantus_final < DEFAULT_THRESHOLD


# ------------------------------------------------------------------ measurements


class InputTimesGradient(AttributionMethod):
    """|input x gradient| summed over channels: for the measurements only (it leans on the image)."""

    name = "ixg"

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        images = images.detach().requires_grad_(True)
        logits = model(images)
        check_logits(logits, targets)
        (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), images)
        return minmax_normalize((gradient * images).sum(dim=1).abs())


def _final_similarities(model: nn.Module, images: Tensor, labels: Tensor, methods: dict, seeds: range) -> dict:
    """Per method: the final-stage median (``stages=4``) per randomisation seed, and the stage curves."""
    finals: dict[str, list[float]] = {name: [] for name in methods}
    curves: dict[str, list[list[float]]] = {name: [] for name in methods}
    for seed in seeds:
        result = cascading_randomization(model, images, labels, methods, stages=4, seed=seed)
        for name in methods:
            finals[name].append(result.similarity[name][-1].item())
            curves[name].append([round(v, 2) for v in result.similarity[name].tolist()])
    return {name: (finals[name], curves[name]) for name in methods}


def measure() -> None:
    """Print the numbers behind DEFAULT_THRESHOLD (module docstring of lightning_sas.trust.sanity)."""
    torch.set_num_threads(1)  # as in the tests: far faster for these small models on a shared machine
    torch.manual_seed(0)
    started = time.perf_counter()
    cnn = train_corner_cnn()
    images, labels = corner_probes(8)
    cases = {
        "SmallCNN corner 32px": (cnn, images),
        "resnet18 random 32px": (torchvision.models.resnet18(num_classes=2).eval(), images),
        "resnet18 random 64px": (
            torchvision.models.resnet18(num_classes=2).eval(),
            F.interpolate(images, size=64, mode="bilinear", align_corners=False),
        ),
    }
    print(f"trained: {cnn_accuracy(cnn):.3f} accuracy on 64 held-out corner images")
    print("final-stage median over 8 probes, seeds 0-2: mean [min, max]; per-stage curves per seed")
    methods = {"gradcam": GradCAM(), "sas": SaS(**CHEAP_SAS), "edges": ImageEdges(), "ixg": InputTimesGradient()}
    runs = [(case, model, probe_images, methods) for case, (model, probe_images) in cases.items()]
    runs.append(("SmallCNN corner 32px", cnn, images, {"sas-100": SaS()}))
    for case, model, probe_images, chosen in runs:
        for name, (finals, curves) in _final_similarities(model, probe_images, labels, chosen, range(3)).items():
            spread = f"{statistics.mean(finals):+.2f} [{min(finals):+.2f}, {max(finals):+.2f}]"
            print(f"{case:22s} {name:8s} {spread}  {curves}")
    print("tails, seeds 0-29: mean, 95th percentile, max, draws above 0.5 / 0.7 / 0.9")
    cheap = {"gradcam": GradCAM(), "ixg": InputTimesGradient()}
    for case, (model, probe_images) in cases.items():
        for probes in (8, 4):
            tails = _final_similarities(model, probe_images[:probes], labels[:probes], cheap, range(30))
            for name, (finals, _) in tails.items():
                values = torch.tensor(finals)
                above = [int((values > cut).sum()) for cut in (0.5, 0.7, 0.9)]
                print(
                    f"{case:22s} {probes} probes {name:8s} mean {values.mean():+.2f} q95 {values.quantile(0.95):+.2f} "
                    f"max {values.max():+.2f} above {above}"
                )
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(measure())
