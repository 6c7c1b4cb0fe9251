"""Explanations: Grad-CAM of the tumour logit, and maps of what the model's features separate.

``gradcam`` computes and draws saliency, ``embedding`` extracts features and projects and
clusters them, ``figures`` draws PNGs, and ``runs`` holds the ``explain``/``embed`` commands' work.
"""

from histoscan.explain.embedding import (
    EmbeddingMap,
    map_embedding,
    mislabel_candidates,
    project_2d,
)
from histoscan.explain.gradcam import GradCAM, centre_fraction, overlay

__all__ = [
    "EmbeddingMap",
    "GradCAM",
    "centre_fraction",
    "map_embedding",
    "mislabel_candidates",
    "overlay",
    "project_2d",
]
