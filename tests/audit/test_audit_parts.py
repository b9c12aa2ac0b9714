"""``audit.explain`` keeps each part on its own, and says when the model's output is not logits."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch
from models import SmallCNN
from torch import Tensor, nn

from lightning_sas.audit.run import explain, predict, problems
from lightning_sas.methods import GradCAM
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import all_ranks_together, failing_together
from lightning_sas.trust.intervention import Artifacts

PROBABILITIES = "the model's output looks like probabilities, not logits"


def small_probes(count: int = 3) -> Probes:
    images = torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    roi = torch.zeros(count, 16, 16, dtype=torch.bool)
    return Probes(images=images, labels=torch.zeros(count, dtype=torch.long), roi=roi, names=["a", "b", "c"][:count])


def model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=3, channels=4).eval()


def test_a_softmax_output_is_reported_as_probabilities_not_logits() -> None:
    images = small_probes().images
    with pytest.warns(UserWarning, match=PROBABILITIES + r".*pass `output=`.*or return logits"):
        predict(nn.Sequential(model(), nn.Softmax(dim=1)), images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # logits (and their exp, which does not sum to 1) do not warn
        predict(model(), images)
        predict(nn.Sequential(model(), nn.Softmax(dim=1), nn.Linear(3, 3)), images)


def test_a_failing_intervention_leaves_the_maps_standing() -> None:
    def broken_paste(images: Tensor, generator: torch.Generator) -> Tensor:
        raise RuntimeError("the paste is broken")

    probes = small_probes()
    result = explain(model(), probes, {"gradcam": GradCAM()}, artifacts=Artifacts(target_class=1, paste=broken_paste))
    assert result.errors == {"intervention": "RuntimeError: the paste is broken"}
    assert result.intervention is None and result.maps["gradcam"].shape == (3, 16, 16)
    assert problems(result, probes.names) == [
        "the intervention could not be measured (RuntimeError: the paste is broken)"
    ]


def test_failing_together_without_other_ranks_is_a_pass_through() -> None:
    # No process group (or a single rank): no collective, the block's own error as it is.
    cpu = torch.device("cpu")
    for together in (False, True):
        ranks = all_ranks_together() if together else nullcontext()
        with pytest.raises(ValueError, match="^own error$"), ranks, failing_together(cpu, "step"):
            raise ValueError("own error")
        with all_ranks_together() if together else nullcontext(), failing_together(cpu):
            value = 1
        assert value == 1
