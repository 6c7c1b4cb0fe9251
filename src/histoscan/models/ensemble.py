"""An ensemble of same-architecture members as one model: mean logit, concatenated features.

Concatenating the members' last feature maps behind one named layer (``features``) gives the
embedding a single vector per patch; Grad-CAM looks at each member's finer 6x6 map instead
(``gradcam_layers``) and averages them.
"""

from __future__ import annotations

import torch
from torch import nn

from histoscan.models.histocnn import HistoCNN
from histoscan.models.registry import ModelSpec, register_model


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.features = nn.Identity()  # Grad-CAM target: all members' feature maps, stacked
        self.splits = [int(m.num_features) for m in members]
        self.num_features = sum(self.splits)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        maps = [m.forward_features(x) for m in self.members]  # each (B, C_i, h, w)
        return self.features(torch.cat(maps, dim=1))  # (B, sum C_i, h, w)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        parts = features.split(self.splits, dim=1)
        if pre_logits:
            return torch.cat(
                [
                    m.forward_head(f, pre_logits=True)
                    for m, f in zip(self.members, parts, strict=True)
                ],
                dim=1,
            )  # (B, sum C_i)
        logits = [m.forward_head(f) for m, f in zip(self.members, parts, strict=True)]
        return torch.stack(logits).mean(dim=0)  # (B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def gradcam_layers(self) -> list[nn.Module]:
        """Every member's finer Grad-CAM layer (6x6 before the last pooling, not the 3x3 output)."""
        return [layer for m in self.members for layer in m.gradcam_layers()]


@register_model(
    ModelSpec(name="histocnn_ensemble", target_layer="features", kwargs={"n_members": 2})
)
def histocnn_ensemble(pretrained: bool = False, n_members: int = 2, **kwargs: object) -> Ensemble:
    if pretrained:
        from histoscan.errors import ModelError

        raise ModelError("histocnn_ensemble has no ImageNet weights")
    return Ensemble([HistoCNN(**kwargs) for _ in range(n_members)])  # type: ignore[arg-type]
