"""What the model sees: a 2-D map of its pre-logit features, clusters and label disagreements.

The features themselves come from the one inference door, ``Predictor.infer_source(...,
features=True)``, in the same pass as the logits, so a report predicts each patch once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoscan.errors import DataError

log = logging.getLogger(__name__)
PROJECTIONS = ("umap", "tsne")
EXACT_KNN_MAX = 20_000  # above this, UMAP's approximate neighbour search is cheaper


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
