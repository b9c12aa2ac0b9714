"""SaS: ground truth, batching, chunking, the schedule, arguments."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from conftest import requires_cuda
from models import RecordsDtypes, RectangleModel, SmallCNN, box_mask

from lightning_sas.methods import GradCAM, SaS
from lightning_sas.methods.baselines import scaled_kernel_size
from lightning_sas.methods.sas_schedule import schedule_thresholds
from lightning_sas.scores.metrics import roi_mass, roi_share, spearman


def off_centre_box(size: int) -> tuple[int, int, int, int]:
    """Rows 3/16..8/16, columns 9/16..15/16 of the image: well away from the centre."""
    return (size * 3 // 16, size * 8 // 16, size * 9 // 16, size * 15 // 16)


# README "Ground truth" table (benchmarks/ground_truth.py): SaS roi_share 0.967 at 32 px and 0.996 at
# 64 px (min over images), Grad-CAM roi_mass 1.000. The bounds allow one pixel of |R| less for SaS
# (|R| = 120 pixels at 32 px, 480 at 64 px).
SAS_ROI_SHARE_AT_LEAST = {32: 0.958, 64: 0.993}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("logit_scale", [0.01, 100.0])
def test_ground_truth_rectangle(size: int, logit_scale: float) -> None:
    """The score depends only on a known rectangle: both methods must find it at default settings,
    as well as the README says they do."""
    box = off_centre_box(size)
    model = RectangleModel(size, box, logit_scale)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    targets = torch.ones(2, dtype=torch.long)
    roi = box_mask(size, box).expand(2, -1, -1)
    area_share = roi[0].float().mean().item()

    # The scale-free objective finds the rectangle at any logit scale (the paper's default, below, at x100).
    sas_maps = SaS(objective="scale_free").attribute(model, images, targets)
    gradcam_maps = GradCAM("features").attribute(model, images, targets)

    assert roi_share(sas_maps, roi).min().item() >= SAS_ROI_SHARE_AT_LEAST[size], f"chance level is {area_share:.2f}"
    # Outside the rectangle the gated features are exactly zero: all of Grad-CAM's mass is inside.
    assert roi_mass(gradcam_maps, roi).min().item() >= 1 - 1e-6
    # Its top pixels straddle the border of the coarse feature map's cells (README: 0.681, 0.829).
    assert roi_share(gradcam_maps, roi).min().item() >= {32: 0.65, 64: 0.8}[size]


def test_scale_free_objective_gives_the_same_map_for_any_logit_scale() -> None:
    size = 32
    box = off_centre_box(size)
    images = torch.rand(2, 3, size, size)
    targets = torch.ones(2, dtype=torch.long)
    scale_free = SaS(iterations=20, objective="scale_free")
    small = scale_free.attribute(RectangleModel(size, box, 0.01), images, targets)
    large = scale_free.attribute(RectangleModel(size, box, 100.0), images, targets)
    # The objective is invariant to the logit scale, so the maps are the same up to float rounding.
    torch.testing.assert_close(small, large, atol=1e-4, rtol=0)
    assert spearman(small, large).min().item() >= 0.99999


def test_paper_objective_is_the_sources_loss_and_depends_on_the_logit_scale() -> None:
    """The paper's loss sums raw logits against a summed TV term: scaling the logits changes the
    balance, so the maps differ (the scale-free objective's do not, see above). At logits x100 the
    score term dominates and the rectangle is found; at x0.01 total variation dominates."""
    size = 32
    box = off_centre_box(size)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = torch.ones(2, dtype=torch.long)
    roi = box_mask(size, box).expand(2, -1, -1)
    paper = SaS()
    with pytest.warns(UserWarning, match="total variation dominates the paper's loss"):
        small = paper.attribute(RectangleModel(size, box, 0.01), images, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # logits large enough: no warning
        large = SaS().attribute(RectangleModel(size, box, 100.0), images, targets)
    assert spearman(small, large).max().item() < 0.9
    assert roi_share(large, roi).min().item() >= SAS_ROI_SHARE_AT_LEAST[size]
    assert roi_share(small, roi).min().item() < roi_share(large, roi).min().item()
    with pytest.raises(ValueError, match="`objective` must be 'scale_free' or 'paper', got 'raw'"):
        SaS(objective="raw")


def test_batched_equals_single_image_calls() -> None:
    model = SmallCNN(num_classes=4).eval()
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([0, 3, 1, 2])
    method = SaS(iterations=5, seed=7)
    batched = method.attribute(model, images, targets)
    singles = torch.cat([method.attribute(model, images[i : i + 1], targets[i : i + 1]) for i in range(4)])
    # Same initial noise for every image, elementwise Adam: equal up to float rounding (1e-5 measured).
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=0)
    assert spearman(batched, singles).min().item() >= 0.99999


def test_chunked_equals_one_forward() -> None:
    model = SmallCNN(num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([1, 2])
    whole = SaS(iterations=5, max_batch=1000).attribute(model, images, targets)
    chunked = SaS(iterations=5, max_batch=7).attribute(model, images, targets)  # 20 items, uneven chunks
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=0)


def test_forwards_per_iteration_and_chunk_sizes() -> None:
    """All images x interior masks x {insertion, deletion}, chunked to max_batch; endpoints skipped."""
    model = SmallCNN(num_classes=4).eval()
    batch_sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    SaS(iterations=3, num_masks=5, max_batch=10).attribute(model, torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))
    items = 3 * (5 - 1) * 2  # 24 per iteration
    assert batch_sizes[0] == 6  # images and their baselines, once
    assert batch_sizes[1:] == [10, 10, 4] * 3
    assert sum(batch_sizes[1:]) == 3 * items


def test_model_parameters_get_no_gradient_work() -> None:
    model = SmallCNN(num_classes=4)
    seen_requires_grad: list[bool] = []
    model.register_forward_pre_hook(
        lambda module, args: seen_requires_grad.append(any(p.requires_grad for p in module.parameters()))
    )
    SaS(iterations=2).attribute(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert seen_requires_grad and not any(seen_requires_grad)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_schedule_thresholds_hit_the_target_areas() -> None:
    importance = torch.exp(0.3 * torch.randn(3, 1024))
    fractions = torch.arange(1, 20) / 20
    thresholds = schedule_thresholds(importance, fractions)
    areas = torch.sigmoid(importance[:, None, :] - thresholds[..., None]).mean(dim=-1)
    torch.testing.assert_close(areas, fractions.expand(3, -1), atol=1e-5, rtol=0)
    moved = importance * torch.exp(0.003 * torch.randn_like(importance))
    warm = schedule_thresholds(moved, fractions, previous=thresholds)
    areas = torch.sigmoid(moved[:, None, :] - warm[..., None]).mean(dim=-1)
    torch.testing.assert_close(areas, fractions.expand(3, -1), atol=1e-5, rtol=0)


def test_kernel_sizes_scale_with_the_image() -> None:
    assert SaS().kernel_sizes(224, 224) == (17, 51)
    assert SaS().kernel_sizes(64, 64) == (scaled_kernel_size(17, 64), scaled_kernel_size(51, 64)) == (5, 15)
    assert SaS(mask_scale=0.5).kernel_sizes(224, 224) == (9, 51)
    assert SaS(smoothing_kernel=7, blur_kernel=21).kernel_sizes(64, 64) == (7, 21)


def test_options_run_and_keep_the_contract() -> None:
    model = RecordsDtypes(num_classes=4)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    for method, dtype in (
        (SaS(iterations=3, score="prob"), torch.float32),
        (SaS(iterations=3, mask_scale=0.5), torch.float32),
        (SaS(iterations=3, autocast_dtype=torch.bfloat16), torch.bfloat16),
    ):
        model.seen.clear()
        maps = method.attribute(model, images, targets)
        assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
        assert maps.min().item() == 0.0 and maps.max().item() == 1.0
        # autocast_dtype really runs the model's convolutions and linears in that dtype.
        assert model.seen and set(model.seen) == {dtype}, method


def test_resnet18_runs() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    maps = SaS(iterations=2).attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 2]))
    assert maps.shape == (2, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "`iterations` must be an integer >= 1, got 0"),
        ({"num_masks": 1}, "`num_masks` must be an integer >= 2, got 1"),
        ({"lr": -1.0}, "`lr` must be a positive number, got -1.0"),
        ({"blur_kernel": 50}, "`blur_kernel` must be odd"),
        ({"score": "softmax"}, "`score` must be 'logit' or 'prob', got 'softmax'"),
        ({"max_batch": 0}, "`max_batch` must be None or an integer >= 1, got 0"),
        ({"mask_scale": 1.5}, r"`mask_scale` must be in \(0, 1\], got 1.5"),
        ({"autocast_dtype": "bf16"}, "`autocast_dtype` must be a torch.dtype"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SaS(**kwargs)


@requires_cuda
@pytest.mark.parametrize("options", [{}, {"schedule_subset": 5, "lr_schedule": "cosine"}])
def test_no_host_sync_in_the_optimisation_loop_on_gpu(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    """The loop runs under sync debug mode "error"; input checks before it may sync once."""
    model = torchvision.models.resnet18(num_classes=3).cuda()
    images = torch.randn(2, 3, 64, 64, device="cuda")
    targets = torch.tensor([0, 2], device="cuda")
    reference = SaS(iterations=3, **options).attribute(model, images, targets)
    loop = SaS._optimise_mask

    def loop_with_syncs_forbidden(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return loop(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(SaS, "_optimise_mask", loop_with_syncs_forbidden)
    maps = SaS(iterations=3, **options).attribute(model, images, targets)
    assert maps.device.type == "cuda"
    assert spearman(maps, reference).min().item() > 0.99


class RunsOutOfMemoryAbove(SmallCNN):
    """Raises torch.OutOfMemoryError for batches larger than ``limit``, like a full GPU would."""

    def __init__(self, limit: int) -> None:
        super().__init__(num_classes=4)
        self.limit = limit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"batch of {images.shape[0]} does not fit")
        return super().forward(images)


def test_out_of_memory_halves_the_chunk_and_retries() -> None:
    model = RunsOutOfMemoryAbove(limit=8).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])  # the reference forward is 4 images
    with pytest.warns(UserWarning, match=r"retrying with max_batch=(16|8)\.") as retries:
        maps = SaS(iterations=3, max_batch=32).attribute(model, images, targets)
    retried = [
        str(warning.message).rsplit(" ", 1)[-1] for warning in retries if "out of memory" in str(warning.message)
    ]
    assert retried == ["max_batch=16.", "max_batch=8."]
    expected = SaS(iterations=3, max_batch=8).attribute(model, images, targets)
    torch.testing.assert_close(maps, expected)
    # Halving down to one image per forward, then giving up: each retry is announced.
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(UserWarning, match=r"retrying with max_batch=[4210]"):
        SaS(iterations=3, max_batch=8).attribute(RunsOutOfMemoryAbove(limit=0), images, targets)


def test_warm_start_continues_from_a_mask() -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    method = SaS(iterations=4, num_masks=4)
    cold_maps, mask = method.attribute_from(model, images, targets)
    torch.testing.assert_close(cold_maps, method.attribute(model, images, targets))
    assert mask.shape == (2, 1, 16, 16)
    # Continuing 4 more steps from that mask is not the same as starting over.
    warm_maps, warm_mask = method.attribute_from(model, images, targets, initial_mask=mask, iterations=4)
    assert not torch.equal(warm_mask, mask)
    assert spearman(warm_maps, cold_maps).min().item() < 1.0
    with pytest.raises(ValueError, match=r"`initial_mask` must have shape \[2, 1, 16, 16\]"):
        method.attribute_from(model, images, targets, initial_mask=mask[:, :, :8])
    with pytest.raises(ValueError, match="`iterations` must be an integer >= 1, got 0"):
        method.attribute_from(model, images, targets, initial_mask=mask, iterations=0)


def test_defaults_cost_a_quarter_of_the_paper() -> None:
    method = SaS()
    assert (method.iterations, method.num_masks, method.lr, method.schedule_subset) == (95, 20, 0.01, 5)
    assert method.passes_per_probe() == 95 * 2 * 5 == 950 <= SaS.paper().passes_per_probe() / 4


def test_paper_preset_is_the_papers_configuration() -> None:
    paper = SaS.paper()
    assert (paper.iterations, paper.num_masks, paper.lr, paper.temperature, paper.tv_weight) == (
        100,
        20,
        0.01,
        0.3,
        0.08,
    )
    assert paper.schedule_subset is None and paper.lr_schedule == "constant" and paper.objective == "paper"
    assert SaS().objective == "paper"  # chosen from the alert study (README)
    assert paper.passes_per_probe() == 100 * 2 * 19 == 3800
    tuned = SaS.paper(max_batch=7, autocast_dtype=torch.bfloat16)
    assert (tuned.iterations, tuned.max_batch, tuned.autocast_dtype) == (100, 7, torch.bfloat16)


def test_schedule_subset_forwards_only_the_drawn_steps() -> None:
    """Per iteration: images x subset x {insertion, deletion}; passes_per_probe says so."""
    model = SmallCNN(num_classes=4).eval()
    batch_sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    method = SaS(iterations=3, num_masks=8, schedule_subset=2, max_batch=1000)
    method.attribute(model, torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))
    assert batch_sizes == [6] + [3 * 2 * 2] * 3
    assert method.passes_per_probe() == 3 * 2 * 2
    assert method.steps_per_iteration() == 2


def test_schedule_subset_of_every_step_is_the_full_schedule() -> None:
    """Subset = K - 1 forwards every step in a shuffled order with the same weights: the same map."""
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    full = SaS(iterations=4, num_masks=6, schedule_subset=None).attribute(model, images, targets)
    shuffled = SaS(iterations=4, num_masks=6, schedule_subset=5).attribute(model, images, targets)
    torch.testing.assert_close(shuffled, full, atol=1e-4, rtol=0)
    # A subset larger than the schedule is the whole schedule, in order.
    larger = SaS(iterations=4, num_masks=6, schedule_subset=9)
    assert larger.passes_per_probe() == SaS(iterations=4, num_masks=6, schedule_subset=None).passes_per_probe() == 40
    torch.testing.assert_close(larger.attribute(model, images, targets), full, atol=0, rtol=0)


def test_schedule_subset_is_seeded_and_batch_independent() -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(3, 3, 16, 16), torch.tensor([0, 3, 1])
    method = SaS(iterations=5, num_masks=10, schedule_subset=3, seed=3)
    batched = method.attribute(model, images, targets)
    singles = torch.cat([method.attribute(model, images[i : i + 1], targets[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=0)
    state = torch.random.get_rng_state()
    torch.testing.assert_close(method.attribute(model, images, targets), batched, atol=0, rtol=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # local generators only
    # Another seed draws other subsets (and other initial noise): another map.
    other = SaS(iterations=5, num_masks=10, schedule_subset=3, seed=4).attribute(model, images, targets)
    assert (other - batched).abs().max().item() > 1e-3


def test_cosine_lr_schedule() -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    # One step: the cosine starts at the full learning rate.
    torch.testing.assert_close(
        SaS(iterations=1, num_masks=4, lr_schedule="cosine").attribute(model, images, targets),
        SaS(iterations=1, num_masks=4).attribute(model, images, targets),
    )
    method = SaS(iterations=6, num_masks=4, lr_schedule="cosine")
    _, cosine_mask = method.attribute_from(model, images, targets)
    _, constant_mask = SaS(iterations=6, num_masks=4).attribute_from(model, images, targets)
    start = SaS(iterations=6, num_masks=4)._initial_mask(2, 16, 16, images.device)
    # Adam moves each value by at most about lr per step: the decaying steps add up to less.
    assert (cosine_mask - start).abs().max().item() < (constant_mask - start).abs().max().item()


def test_warm_start_with_a_schedule_subset() -> None:
    model = SmallCNN(num_classes=4).eval()
    images, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    method = SaS(iterations=3, num_masks=6, schedule_subset=2, lr_schedule="cosine")
    _, mask = method.attribute_from(model, images, targets)
    maps, warm_mask = method.attribute_from(model, images, targets, initial_mask=mask, iterations=2)
    assert maps.shape == (2, 16, 16) and not torch.equal(warm_mask, mask)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule_subset": 0}, "`schedule_subset` must be an integer >= 1, got 0"),
        ({"schedule_subset": 2.0}, "`schedule_subset` must be an integer >= 1, got 2.0"),
        ({"lr_schedule": "linear"}, "`lr_schedule` must be 'constant' or 'cosine', got 'linear'"),
    ],
)
def test_bad_schedule_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SaS(**kwargs)
