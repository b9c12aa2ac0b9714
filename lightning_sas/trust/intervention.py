"""Causal confirmation of a shortcut: paste the artifact, watch the prediction.

A saliency map says where the model looks; an intervention says whether it matters. The
suspected artifact (a ruler, an ink mark, a watermark) is pasted onto the probes the model
does *not* assign to the artifact's class, at several seeded positions, and the audit
measures how often the prediction moves to the artifact's class (``flip_rate``) and how much
the probability of that class changes on average (``probability_change``). A model that
learned "ruler => malignant" flips benign lesions to malignant when a ruler appears; a model
that ignores the ruler does not.

:class:`Artifacts` holds the examples (patches with masks, in the model's input space) or a
callable that pastes one; :func:`intervene` does the measurement, batched, without side
effects on the model.

Trial ``t`` pastes the same example at the same position onto every probe, drawn from the
seed alone: a probe's result does not depend on which other probes are measured with it, so a
DDP audit that measures each rank's shard gets the results of one process measuring them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lightning_sas.probes.artifact_folder import ArtifactFolder
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector

if TYPE_CHECKING:
    from lightning_sas.probes.folder_dataset import ProbeFolderDataset

#: A custom paste: ``paste(images [N, C, H, W], generator) -> images with the artifact``. It is
#: called with one image at a time (``N = 1``), the generator in the same state for every probe
#: of a trial, and must draw its randomness from the generator only.
PasteFunction = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class Artifacts:
    """Examples of a suspected shortcut artifact and the class it is suspected to push towards.

    Either ``patches`` and ``masks`` (examples cut from real images, in the same normalised
    input space as the probes) or ``paste`` (a function that adds the artifact to a batch).
    A patch as large as the probes is pasted where it is (e.g. a ruler at the image edge, cut
    out with its exact mask); a smaller one at a seeded random position. Each trial draws one
    example and one position and pastes them onto every probe.

    Args:
        target_class: The class the artifact is suspected to drive predictions to.
        patches: ``[N, C, h, w]`` float artifact examples.
        masks: ``[N, h, w]`` bool/0-1 masks of the artifact pixels in each patch.
        paste: Alternative to patches: ``paste(images, generator) -> images``; it must draw
            its randomness from ``generator`` only (see :data:`PasteFunction`).
        trials: How many pastes (positions / examples) per probe.
        seed: Seed of the positions and example choices (a local generator; trial ``t``'s
            draw depends on ``seed`` and ``t`` only).

    Raises:
        ValueError: If neither or both of ``patches`` and ``paste`` are given, shapes do not
            fit, or ``target_class`` / ``trials`` / ``seed`` are out of range.

    Example:
        >>> patch = torch.ones(1, 3, 4, 4)
        >>> artifacts = Artifacts(target_class=1, patches=patch, masks=torch.ones(1, 4, 4))
        >>> artifacts.apply(torch.zeros(2, 3, 8, 8), torch.Generator().manual_seed(0)).sum().item()
        96.0
    """

    target_class: int
    patches: Tensor | None = None
    masks: Tensor | None = None
    paste: PasteFunction | None = None
    trials: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_class, bool) or not isinstance(self.target_class, int) or self.target_class < 0:
            raise ValueError(f"`target_class` must be a class index >= 0, got {self.target_class!r}.")
        for name in ("trials", "seed"):
            value = getattr(self, name)
            minimum = 1 if name == "trials" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
        if (self.paste is None) == (self.patches is None):
            raise ValueError("Give either `patches` (with `masks`) or `paste`, not both or neither.")
        if self.paste is not None:
            if not callable(self.paste):
                raise ValueError(f"`paste` must be callable, got {type(self.paste).__name__}.")
            return
        patches, masks = self.patches, self.masks
        if not isinstance(patches, Tensor) or patches.dim() != 4 or not patches.is_floating_point():
            described = list(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__
            raise ValueError(f"`patches` must be a float tensor [N, C, h, w], got {described}.")
        if not isinstance(masks, Tensor) or masks.shape != (patches.shape[0], *patches.shape[-2:]):
            described = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(
                f"`masks` must have shape [N, h, w] = {[patches.shape[0], *patches.shape[-2:]]} to match "
                f"`patches`, got {described}."
            )
        self.masks = masks > 0.5 if masks.is_floating_point() else masks.bool()
        if not bool(self.masks.flatten(1).any(dim=1).all()):
            raise ValueError("every artifact mask in `masks` must mark at least one pixel.")

    @classmethod
    def from_folder(
        cls,
        directory: str | os.PathLike[str],
        target_class: int | str,
        probes: ProbeFolderDataset,
        *,
        trials: int = 4,
        seed: int = 0,
    ) -> Artifacts:
        """The artifact folder ``lightning-sas audit --artifacts DIR`` reads, for the callback's ``artifacts=``.

        The patches are read and normalised as the command line reads them for the same probes
        (:func:`~lightning_sas.probes.artifact_folder.read_artifact_folder`, :func:`to_artifacts`):
        at the probes' size, channels and normalisation, whole images recognised by the probe
        files' sizes.

        Args:
            directory: The artifact folder (patches, and their masks in ``masks/``).
            target_class: The class the artifact is suspected to push to: an index, or a name of
                ``probes.class_names`` (``--artifact-class``).
            probes: The probe set the artifacts are pasted onto.
            trials: Pastes per probe (``--artifact-trials``).
            seed: Seed of the pastes.

        Raises:
            ValueError: If the folder or the class cannot be used (the message names the argument).
        """
        from lightning_sas.probes.artifact_folder import read_artifact_folder
        from lightning_sas.probes.errors import ProbeFolderError
        from lightning_sas.probes.labels import class_index

        try:
            # An index is range-checked as a name is looked up (a bool is neither).
            if isinstance(target_class, bool):
                raise ProbeFolderError(f"a class name or index, got {target_class!r}.")
            index = class_index(str(target_class), probes.class_names, source="the probes' `class_names`")
        except ProbeFolderError as error:
            raise ValueError(f"`target_class`: {error}") from None
        try:
            folder = read_artifact_folder(
                directory, size=probes.image_size, channels=probes.channels, probe_file_sizes=probes.folder.file_sizes
            )
        except ProbeFolderError as error:
            raise ValueError(f"`directory`: {error}") from None
        return to_artifacts(folder, probes.mean, probes.std, target_class=index, trials=trials, seed=seed)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``images`` ``[N, C, H, W]`` with one artifact pasted into each, the same draw from
        ``generator`` for every image (so an image's paste does not depend on the others).

        Raises:
            ValueError: If a patch is larger than the images or has other channels, or ``paste``
                does not return a tensor of the image's shape.
        """
        if self.paste is not None:
            return self._paste_each(images, generator)
        patches, masks = self.patches, self.masks
        if patches is None or masks is None:  # unreachable after __post_init__; for type checkers
            raise ValueError("`patches` and `masks` are required without `paste`.")
        _, channels, height, width = images.shape
        if patches.shape[1] != channels or patches.shape[2] > height or patches.shape[3] > width:
            raise ValueError(
                f"artifact patches {list(patches.shape[1:])} must have the probes' {channels} channels and "
                f"fit in their {height}x{width} pixels."
            )
        index = int(torch.randint(patches.shape[0], (1,), generator=generator))
        y = int(torch.randint(height - patches.shape[2] + 1, (1,), generator=generator))
        x = int(torch.randint(width - patches.shape[3] + 1, (1,), generator=generator))
        result = images.clone()
        region = result[:, :, y : y + patches.shape[2], x : x + patches.shape[3]]
        patch = patches[index].to(device=images.device, dtype=images.dtype)
        region.copy_(torch.where(masks[index].to(images.device), patch, region))
        return result

    def _paste_each(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The custom paste on one image at a time, each from the generator's same state."""
        state = generator.get_state()
        pasted = []
        for image in images.split(1):  # one call per image: its draw cannot depend on the others
            generator.set_state(state)
            result = self.paste(image, generator)  # type: ignore[misc]
            if not isinstance(result, Tensor) or result.shape != image.shape:
                described = list(result.shape) if isinstance(result, Tensor) else type(result).__name__
                raise ValueError(
                    f"`paste` must return images of the shape it is given, {list(image.shape)}; got {described}."
                )
            pasted.append(result)
        return torch.cat(pasted) if pasted else images.clone()


@dataclass
class InterventionResult:
    """What pasting the artifact did, per probe (plain tensors: they gather across DDP ranks).

    Attributes:
        eligible: ``[N]`` bool: the probes the score counts, those not predicted as the
            artifact's class before the paste (every probe is pasted and forwarded, so all
            ranks of a distributed audit make the same forward calls).
        flipped: ``[N, trials]`` bool: whether each paste moved the prediction to the
            artifact's class.
        probability_change: ``[N, trials]``: the artifact class's probability after the
            paste minus before.
        target_class: The artifact's class.
    """

    eligible: Tensor
    flipped: Tensor
    probability_change: Tensor
    target_class: int

    @property
    def flip_rate(self) -> float:
        """Share of the eligible probes' pastes that flipped the prediction (NaN if none is eligible)."""
        if not bool(self.eligible.any()):
            return float("nan")
        return float(self.flipped[self.eligible].float().mean())

    @property
    def mean_probability_change(self) -> float:
        """Mean change of the artifact class's probability over the eligible probes' pastes."""
        if not bool(self.eligible.any()):
            return float("nan")
        return float(self.probability_change[self.eligible].mean())


def intervene(
    model: nn.Module,
    images: Tensor,
    artifacts: Artifacts,
    *,
    output: OutputSelector = None,
    max_batch: int = 256,
) -> InterventionResult:
    """Paste ``artifacts`` onto every probe ``trials`` times and measure the flips.

    Only the probes not predicted as the artifact's class count (see
    :attr:`InterventionResult.eligible`); a flip is a prediction that moves to that class.

    Args:
        model: The classifier (no side effects: eval mode, flags and RNGs restored).
        images: Probes ``[N, C, H, W]`` as the model takes them.
        artifacts: The artifact examples or paste function, with the suspected class.
        output: Where the logits are in the model's output (see :mod:`lightning_sas.runtime.outputs`).
        max_batch: Most images per forward.

    Returns:
        The :class:`InterventionResult`.

    Raises:
        ValueError: If the artifact's class is not a class of the model, or the model's output
            is not class logits.
    """
    generator = torch.Generator().manual_seed(artifacts.seed)
    trials, target = artifacts.trials, artifacts.target_class
    with attribution_mode(ClassifierOutput.wrap(model, output)) as forward_module, torch.no_grad():

        def probabilities(batch: Tensor) -> Tensor:
            return torch.cat([forward_module(part).float().softmax(dim=1) for part in batch.split(max_batch)])

        before = probabilities(images)
        if target >= before.shape[1]:
            raise ValueError(
                f"the artifact's `target_class`={target} is not a class of this model ({before.shape[1]} classes)."
            )
        # One draw per trial, in trial order: probe n's trial t is the same in any batch.
        pasted = torch.cat([artifacts.apply(images, generator) for _ in range(trials)])
        after = probabilities(pasted).view(trials, images.shape[0], -1).transpose(0, 1)
    return InterventionResult(
        eligible=before.argmax(dim=1) != target,
        flipped=after.argmax(dim=2) == target,
        probability_change=after[..., target] - before[:, target, None],
        target_class=target,
    )


def to_artifacts(
    folder: ArtifactFolder,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    target_class: int,
    trials: int = 4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Artifacts:
    """The folder's patches as :class:`Artifacts`, normalised like the probes.

    Args:
        folder: From :func:`~lightning_sas.probes.artifact_folder.read_artifact_folder`.
        mean: One value per channel, as for :func:`~lightning_sas.probes.folder.to_probes`.
        std: One value per channel.
        target_class: The class the artifact is suspected to push predictions to.
        trials: Pastes per probe.
        seed: Seed of the paste positions and patch choices.
        device: Where the tensors go.
    """
    patches = torch.from_numpy(np.stack(folder.patches)).permute(0, 3, 1, 2).contiguous()
    mean_tensor = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return Artifacts(
        target_class=target_class,
        patches=((patches - mean_tensor) / std_tensor).to(device),
        masks=torch.from_numpy(np.stack(folder.masks)).to(device),
        trials=trials,
        seed=seed,
    )
