"""What the model sees: pre-logit features, a 2-D map of them, clusters and label disagreements.

Features and logits come from one forward pass (``forward_features`` then ``forward_head`` twice,
once with ``pre_logits=True``), so a report predicts each patch once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoscan.calibration import sigmoid
from histoscan.data.sources import PatchSource
from histoscan.data.transforms import tta_views
from histoscan.errors import DataError
from histoscan.models.bundle import ModelFile
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)
PROJECTIONS = ("umap", "tsne")
EXACT_KNN_MAX = 20_000  # above this, UMAP's approximate neighbour search is cheaper


@dataclass
class Inference:
    """Raw logits per TTA view and the identity view's pre-logit features."""

    logits: np.ndarray  # (N, V) float64, before temperature scaling; view 0 is the identity
    features: np.ndarray  # (N, D) float32

    def probs(self, temperature: float, tta: bool = True) -> np.ndarray:
        """Calibrated tumour probabilities (N,): mean over the views, or the identity view only."""
        logits = self.logits.mean(axis=1) if tta else self.logits[:, 0]
        return sigmoid(logits / temperature)


def infer(mf: ModelFile, images: np.ndarray, tta: str = "none", batch_size: int = 128) -> Inference:
    """Logits for every TTA view and features, for uint8 patches (N, H, W, 3).

    The mean over views equals ``Predictor.logits(images, tta)``: same preprocessing, same views.
    """
    import torch

    from histoscan.data.transforms import dihedral

    views = tta_views(tta)
    net = mf.inference_net().to(memory_format=torch.channels_last)
    n = len(images)
    logits = np.empty((n, len(views)), dtype=np.float64)
    features: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            for j, k in enumerate(views):
                # patches are (B, H, W, 3): transform the spatial dims, not the channels
                view = dihedral(batch.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1) if k else batch
                feats = net.net.forward_features(net.preprocess(view))  # (B, C, h, w)
                logits[start : start + len(batch), j] = net.net.forward_head(feats)[:, 0].double()
                if j == 0:
                    pooled = net.net.forward_head(feats, pre_logits=True).float().numpy()  # (B, D)
                    if features is None:
                        features = np.empty((n, pooled.shape[1]), dtype=np.float32)
                    features[start : start + len(batch)] = pooled
    if features is None:
        features = np.zeros((0, 0), dtype=np.float32)
    return Inference(logits=logits, features=features)


def infer_source(
    mf: ModelFile,
    source: PatchSource,
    indices: Sequence[int],
    tta: str = "none",
    batch_size: int = 128,
    progress: bool = True,
) -> Inference:
    """``infer`` over some patches of a source, read in chunks with a progress bar."""
    idx = np.asarray(indices, dtype=np.int64)
    parts: list[Inference] = []
    chunk = batch_size * 8
    with progress_bar("predict", total=len(idx), show=progress, unit="patches") as bar:
        for start in range(0, len(idx), chunk):
            parts.append(infer(mf, source.read_many(idx[start : start + chunk]), tta, batch_size))
            bar.advance(len(parts[-1].logits))
    if not parts:
        raise DataError(f"{source.root}: no patches to predict")
    return Inference(
        logits=np.concatenate([p.logits for p in parts]),
        features=np.concatenate([p.features for p in parts]),
    )


def embed_features(mf: ModelFile, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Pre-logit features (N, D) float32 of uint8 patches (N, H, W, 3), identity view."""
    return infer(mf, images, "none", batch).features


def reduce_features(features: np.ndarray, dims: int = 50) -> np.ndarray:
    """Standardised features projected on their first ``dims`` principal components (N, <=dims)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    k = min(dims, x.shape[0], x.shape[1])
    if k < 2:
        return x.astype(np.float32)
    return PCA(n_components=k, random_state=0).fit_transform(x).astype(np.float32)


def project_2d(
    features: np.ndarray, method: str = "umap", seed: int = 0, n_epochs: int = 200
) -> np.ndarray:
    """A 2-D map (N, 2) float32 of features (N, D): UMAP, or t-SNE when asked, tiny or failing.

    UMAP needs a neighbourhood graph, so below 16 points t-SNE is used; below 3, PCA.
    """
    return _project(features, method, seed, n_epochs)[0]


def _project(
    features: np.ndarray, method: str, seed: int, n_epochs: int = 200
) -> tuple[np.ndarray, str]:
    """``project_2d`` and the name of the method that made the map."""
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose from {', '.join(PROJECTIONS)}")
    x = reduce_features(features)
    n = len(x)
    if n < 3:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1])))).astype(np.float32), "pca"
    if method == "umap" and n >= 16:
        try:
            return _umap(x, min(15, n - 1), seed, n_epochs), "umap"
        except Exception as exc:  # umap/numba fail in many ways; the map is still worth having
            log.warning("UMAP failed (%s: %s); using t-SNE", type(exc).__name__, exc)
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32), "tsne"


def _umap(x: np.ndarray, k: int, seed: int, n_epochs: int) -> np.ndarray:
    """UMAP of (N, d) with exact neighbours when N is moderate.

    Exact k-NN by brute force takes a second for 10,000 points, where UMAP's approximate
    search (NN-descent) took a minute on 2 cores.
    """
    import warnings

    import umap

    knn: tuple[Any, Any, Any] = (None, None, None)
    if len(x) <= EXACT_KNN_MAX:
        from sklearn.neighbors import NearestNeighbors

        dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
        knn = (idx, dist.astype(np.float32), None)  # each point is its own first neighbour
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=0.1,
        n_epochs=n_epochs,
        random_state=seed,
        n_jobs=1,
        precomputed_knn=knn,
    )  # a seed implies one thread anyway
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no search index (we never transform new data)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def cluster_features(
    features: np.ndarray, k: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the reduced features: cluster per patch (N,) and distance to its centre (N,)."""
    from sklearn.cluster import KMeans

    x = reduce_features(features)
    k = max(1, min(k, len(x)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    dist = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_.astype(np.int64), dist


def summarise_clusters(
    cluster: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    n_exemplars: int = 6,
) -> list[dict[str, Any]]:
    """Per cluster: size, tumour fraction among labelled patches, mean probability, exemplars.

    Exemplars are the patches nearest the cluster centre (indices into the arrays given).
    """
    rows = []
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        known = labels[members] >= 0
        rows.append(
            {
                "cluster": int(c),
                "size": len(members),
                "tumour_fraction": float(labels[members][known].mean()) if known.any() else None,
                "mean_prob": float(probs[members].mean()),
                "exemplars": members[np.argsort(dist[members])[:n_exemplars]].tolist(),
            }
        )
    return rows


def mislabel_candidates(
    labels: np.ndarray, probs: np.ndarray, high: float = 0.9, low: float = 0.1
) -> np.ndarray:
    """Indices where the model confidently disagrees with the label, most confident first.

    Label 0 with probability above ``high``, or label 1 below ``low``: worth a pathologist's look,
    though many are honest model errors rather than wrong labels.
    """
    suspect = ((labels == 0) & (probs > high)) | ((labels == 1) & (probs < low))
    idx = np.flatnonzero(suspect)
    disagreement = np.abs(probs[idx] - labels[idx])
    return idx[np.argsort(-disagreement, kind="stable")]


@dataclass
class EmbeddingMap:
    """A 2-D map of patches with k-means clusters and mislabel candidates (indices into N)."""

    xy: np.ndarray  # (N, 2)
    cluster: np.ndarray  # (N,)
    clusters: list[dict[str, Any]]
    mislabels: np.ndarray  # (M,)
    method: str


def map_embedding(
    features: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    n_clusters: int = 8,
    method: str = "umap",
    seed: int = 0,
) -> EmbeddingMap:
    """Project, cluster and flag disagreements for features (N, D), labels (N,) and probs (N,)."""
    if len(features) == 0:
        raise DataError("no patches to embed")
    xy, used = _project(features, method, seed)
    cluster, dist = cluster_features(features, n_clusters, seed)
    return EmbeddingMap(
        xy=xy,
        cluster=cluster,
        clusters=summarise_clusters(cluster, dist, labels, probs),
        mislabels=mislabel_candidates(labels, probs),
        method=used,
    )
