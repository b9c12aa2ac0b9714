"""The strategies a classifier uses for one class: SpRAy's spectral relevance analysis.

Lapuschkin et al. (2019, "Unmasking Clever Hans predictors and assessing what machines really
learn") cluster a class's attribution maps: a model that learned one strategy (look at the lesion)
gives maps that vary smoothly around one pattern, a model that learned two (the lesion on some
images, a watermark in the corner on others) gives two groups of maps whose spatial patterns
barely overlap. The recipe, followed here:

1. each map is downsampled (16x16 by default, so that a few pixels' shift does not count) and
   scaled to unit norm (only the spatial pattern matters, not the method's scale);
2. an affinity graph connects maps with similar patterns: SpRAy's k-nearest-neighbour graph, in
   its self-tuning form (Zelnik-Manor & Perona 2004): ``exp(-d_ij² / (σ_i σ_j))`` with ``σ_i`` the
   distance from map ``i`` to its 7th nearest neighbour. A plain kNN connectivity graph, on the
   tens of maps per class a probe set has, falls apart into cliques of near-identical maps (one
   strategy, a blob jittered by a pixel, came out as 3-4 "strategies"); the local scale keeps
   one continuum connected and still cuts between strategies that share no pixels;
3. the eigenvalues of the normalised graph Laplacian count the groups: ``j`` groups with almost
   no affinity between them give ``j`` eigenvalues near 0 and a gap after them (the *eigengap*;
   here: ``λ_{j-1} <= 0.3`` and ``λ_j >= 3 λ_{j-1}``, see :data:`SPLIT_RATIO`);
4. k-means on the spectral embedding assigns each map to one of the ``k`` strategies.

The embedding and k-means come from scikit-learn (``spectral_embedding``, ``KMeans``, with
``pairwise_distances`` for the graph), imported inside :func:`cluster_strategies` so that importing
the package stays light: it is well kept, deterministic under ``random_state``, and it is what
SpRAy's reference implementation (CoRelAy) builds on, so the clusters follow the published method
rather than a hand-written approximation of it. Only the Laplacian's few smallest eigenvalues
(for the eigengap, which scikit-learn's embedding does not return) come from SciPy's ``laplacian``
and ``eigh``, which scikit-learn itself uses for them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sas.validation import require_int, require_tensor, shape_of

__all__ = ["Strategies", "cluster_strategies"]

#: Side of the downsampled maps that are clustered (SpRAy used 32x32 on 224-px inputs; 16 keeps
#: tiny probes at their own size and makes a shift of a few pixels irrelevant).
CLUSTER_SIDE = 16
#: Most probes shown per cluster (the ones closest to its mean pattern).
REPRESENTATIVES = 4
#: The k of the self-tuning affinity (Zelnik-Manor & Perona 2004, who use 7; at most a third of
#: a small class's maps): each map's distance scale is the distance to its k-th nearest neighbour.
#: A strategy needs about this many maps to stand apart; fewer, and their scale reaches into the
#: next strategy.
NEIGHBOURS = 7
#: Eigenvalues of the normalised Laplacian up to this count as "near 0" (groups of maps with little
#: affinity between them) ...
SPLIT_EIGENVALUE = 0.3
#: ... when the next eigenvalue is at least this many times larger. Measured on blob maps moved by
#: up to a pixel (8 seeds, 10-64 maps): one strategy λ_2 / λ_1 <= 2.2, two or three that share no
#: pixels >= 4.5; clean ruler-demo models' Grad-CAM and occlusion maps: λ_1 >= 0.4 (one cluster);
#: shortcut models' Grad-CAM maps (ruler at 4 edges, patch in 4 corners): ratios 3-5.
SPLIT_RATIO = 3.0


@dataclass
class Strategies:
    """How one predicted class's maps split into strategies.

    Attributes:
        class_index: The predicted class.
        labels: ``[n]`` int64 cluster id of each probe predicted as ``class_index``; cluster 0 is
            the largest (ids are ordered by size, then by their first probe).
        positions: The probe positions (into the probe set) of those ``n`` probes, in order.
        mean_maps: ``[k, H, W]`` each cluster's mean map at full resolution (CPU).
        representatives: Per cluster, up to 4 probe positions whose maps lie closest to the
            cluster's mean pattern.
        eigengap: How clearly the class splits: the gap ``λ_k - λ_{k-1}`` after the ``k``
            smallest eigenvalues of the affinity graph's normalised Laplacian (each in ``[0, 2]``)
            that made the ``k >= 2`` clusters (``λ_{k-1} <= 0.3`` and ``λ_k >= 3 λ_{k-1}``, the
            largest such ratio). 0 when the maps form one strategy; NaN when the class has too
            few probes to tell (one cluster then).
        eigenvalues: The Laplacian's smallest ``max_clusters + 1`` eigenvalues, ascending (empty
            when too few probes).
    """

    class_index: int
    labels: Tensor
    positions: list[int]
    mean_maps: Tensor
    representatives: list[list[int]]
    eigengap: float
    eigenvalues: list[float]

    @property
    def clusters(self) -> int:
        """The number of strategies found."""
        return int(self.mean_maps.shape[0])

    def to_dict(self) -> dict:
        """Plain JSON-able data (no tensors except as lists; the mean maps are left out)."""
        sizes = torch.bincount(self.labels, minlength=self.clusters).tolist() if self.labels.numel() else []
        return {
            "class_index": self.class_index,
            "clusters": self.clusters,
            "sizes": sizes,
            "labels": self.labels.tolist(),
            "positions": list(self.positions),
            "representatives": [list(group) for group in self.representatives],
            "eigengap": _json_float(self.eigengap),
            "eigenvalues": [_json_float(value) for value in self.eigenvalues],
        }


def _json_float(value: float) -> float | None:
    """NaN as ``None`` (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)


def _patterns(maps: Tensor) -> Tensor:
    """``[n, s*s]`` float64: each map downsampled, shifted to a minimum of 0 and scaled to unit norm."""
    side = min(CLUSTER_SIDE, maps.shape[-2], maps.shape[-1])
    small = F.adaptive_avg_pool2d(maps.nan_to_num(0.0).float()[:, None], side).flatten(1).double()
    small = small - small.amin(dim=1, keepdim=True)
    norms = small.norm(dim=1, keepdim=True)
    # A flat map has no pattern; it becomes the zero vector and groups with the other flat maps.
    return torch.where(norms > 0, small / norms.clamp(min=1e-12), torch.zeros_like(small))


def _neighbours(count: int) -> int:
    """The self-tuning k for ``count`` maps: ``NEIGHBOURS``, or a third of the maps in a small
    class (a strategy of 6 maps out of 12 must not have its scale reach into the other 6)."""
    return max(3, min(NEIGHBOURS, count // 3, count - 1))


def _split(patterns: np.ndarray, max_clusters: int, seed: int) -> tuple[np.ndarray, float, list[float]]:
    """(labels, eigengap, eigenvalues) of one class's patterns ``[n, d]`` with ``n > max_clusters``."""
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding
    from sklearn.metrics import pairwise_distances

    count = patterns.shape[0]
    distances = pairwise_distances(patterns)
    # Self-tuning affinity: each map's scale is the distance to its k-th nearest neighbour.
    scale = np.sort(distances, axis=1)[:, _neighbours(count)]
    affinity = np.exp(-(distances**2) / np.maximum(np.outer(scale, scale), 1e-12))
    np.fill_diagonal(affinity, 0.0)
    eigenvalues = eigh(laplacian(affinity, normed=True), eigvals_only=True, subset_by_index=[0, max_clusters])
    eigenvalues = np.clip(eigenvalues, 0.0, 2.0)
    # j groups stand apart when the j smallest eigenvalues are near 0 and the next one is not:
    # λ_{j-1} <= SPLIT_EIGENVALUE and λ_j >= SPLIT_RATIO · λ_{j-1}. The ratio, not the gap, decides:
    # λ_1 of one strategy falls as the class grows (0.4 for 10 maps, 0.1-0.2 for 64), λ_2 / λ_1
    # stays under about 2; strategies that share no pixels give ratios of 10 and more.
    ratios = {
        j: float(eigenvalues[j] / max(eigenvalues[j - 1], 1e-9))
        for j in range(2, max_clusters + 1)
        if eigenvalues[j - 1] <= SPLIT_EIGENVALUE
    }
    options = [j for j, ratio in ratios.items() if ratio >= SPLIT_RATIO]
    clusters = max(options, key=lambda j: (ratios[j], -j)) if options else 1
    eigengap = float(eigenvalues[clusters] - eigenvalues[clusters - 1]) if options else 0.0
    if clusters == 1:
        return np.zeros(count, dtype=np.int64), eigengap, eigenvalues.tolist()
    with warnings.catch_warnings():
        # Strategies that share no neighbours leave the graph disconnected: that is the clearest
        # split, not a failure (the embedding's leading vectors then indicate the components).
        warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
        embedding = spectral_embedding(
            affinity, n_components=clusters, random_state=seed, norm_laplacian=True, drop_first=False
        )
    # Ng-Jordan-Weiss: rows scaled to unit length before k-means.
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(embedding)
    return labels.astype(np.int64), eigengap, eigenvalues.tolist()


def cluster_strategies(
    maps: Tensor, predictions: Tensor, *, max_clusters: int = 4, seed: int = 0
) -> dict[int, Strategies]:
    """Cluster each predicted class's maps into the strategies the model uses for it (SpRAy).

    Args:
        maps: Attribution maps ``[N, H, W]`` (any device; the clustering runs on the CPU).
        predictions: ``[N]`` the predicted class of each probe (the class each map explains).
        max_clusters: Most strategies per class (>= 1). A class with at most this many probes
            is one cluster (too few maps to tell strategies apart).
        seed: Seed of the spectral embedding and k-means (scikit-learn's ``random_state``); the
            global random streams are not used.

    Returns:
        ``{class: Strategies}`` for every class that is predicted at least once.

    Raises:
        TypeError: If ``maps`` or ``predictions`` is not a tensor.
        ValueError: If the shapes do not fit, or ``max_clusters`` / ``seed`` are out of range.

    Example:
        >>> maps = torch.zeros(12, 8, 8)
        >>> maps[:6, :4, :4] = 1.0  # six maps on the top-left corner ...
        >>> maps[6:, 4:, 4:] = 1.0  # ... six on the bottom-right one
        >>> maps += 0.01 * torch.rand(12, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> found = cluster_strategies(maps, torch.zeros(12, dtype=torch.long))
        >>> found[0].clusters, found[0].labels.tolist()
        (2, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    """
    _check_inputs(maps, predictions, max_clusters, seed)
    maps = maps.detach().cpu()
    predicted = predictions.detach().cpu().long()
    return {
        int(class_index): _class_strategies(maps, predicted, int(class_index), max_clusters, seed)
        for class_index in torch.unique(predicted).tolist()
    }


def _check_inputs(maps: Tensor, predictions: Tensor, max_clusters: int, seed: int) -> None:
    """``TypeError`` / ``ValueError`` unless the maps, predictions and settings fit."""
    require_tensor("cluster_strategies", "maps", maps)
    require_tensor("cluster_strategies", "predictions", predictions)
    require_int("max_clusters", max_clusters, minimum=1)
    require_int("seed", seed, minimum=0)
    if maps.dim() != 3 or not maps.is_floating_point():
        raise ValueError(f"cluster_strategies: `maps` must be a float tensor [N, H, W], got {shape_of(maps)}")
    if predictions.shape != maps.shape[:1] or predictions.is_floating_point():
        raise ValueError(
            f"cluster_strategies: `predictions` must be integer class indices [{maps.shape[0]}], "
            f"got {predictions.dtype} {shape_of(predictions)}"
        )


def _class_strategies(maps: Tensor, predicted: Tensor, class_index: int, max_clusters: int, seed: int) -> Strategies:
    """The strategies of one predicted class: its maps clustered, each cluster's mean and representatives."""
    positions = torch.nonzero(predicted == class_index).flatten()
    patterns = _patterns(maps[positions])
    if len(positions) > max(max_clusters, 2):
        labels, eigengap, eigenvalues = _split(patterns.numpy(), max_clusters, seed)
    else:
        labels, eigengap, eigenvalues = np.zeros(len(positions), dtype=np.int64), float("nan"), []
    labels = _ordered(torch.from_numpy(labels))
    clusters = int(labels.max()) + 1
    members = [torch.nonzero(labels == cluster).flatten() for cluster in range(clusters)]
    representatives = []
    for rows in members:
        centre = patterns[rows].mean(dim=0, keepdim=True)
        closest = torch.cdist(patterns[rows], centre)[:, 0].argsort(stable=True)[:REPRESENTATIVES]
        representatives.append(positions[rows[closest]].tolist())
    return Strategies(
        class_index=class_index,
        labels=labels,
        positions=positions.tolist(),
        mean_maps=torch.stack([maps[positions[rows]].float().nan_to_num(0.0).mean(dim=0) for rows in members]),
        representatives=representatives,
        eigengap=eigengap,
        eigenvalues=[float(value) for value in eigenvalues],
    )


def _ordered(labels: Tensor) -> Tensor:
    """Cluster ids renumbered by size (largest first), ties by first member: independent of k-means' ids."""
    ids = torch.unique(labels).tolist()
    order = sorted(ids, key=lambda cluster: (-int((labels == cluster).sum()), int(torch.nonzero(labels == cluster)[0])))
    remap = {old: new for new, old in enumerate(order)}
    return torch.tensor([remap[int(value)] for value in labels.tolist()], dtype=torch.int64)
