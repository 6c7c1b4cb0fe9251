"""HistoCNN: our own small CNN for 96x96 patches, fast on a 2-core CPU.

A stride-2 stem (96 -> 48), then four stages of two 3x3 conv-BN layers with a 1x1 residual
shortcut, each followed by 2x2 max pooling: 48 -> 24 -> 12 -> 6 -> 3, then global average pooling.
1.2 M parameters; Grad-CAM looks at the 6x6 map before the last pooling (``gradcam_layers``).
On a 2-core Xeon it trains at ~240 patches/s in fp32 channels_last, about twice
resnet18, which has 9x the parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from histoscan.models.registry import ModelSpec, register_model


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Stage(nn.Module):
    """Two conv-BN-ReLU layers plus a 1x1 shortcut, then 2x2 max pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out)
        self.conv2 = nn.Sequential(
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        )
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
        return self.pool(y)


class HistoCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(  # (B, 3, 96, 96) -> (B, C0, 48, 48)
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        c_in = widths[0]
        for width in widths:
            stages.append(Stage(c_in, width))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C, H/32, W/32)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))  # (B, C)
        if pre_logits:
            return pooled
        return self.fc(self.dropout(pooled))  # (B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def gradcam_layers(self) -> list[nn.Module]:
        """Grad-CAM's target: the last stage's activation before its pooling, (B, C, H/16, W/16).

        6x6 for a 96 px patch, where the pooled output is 3x3: one cell is 16 px, half the
        labelled centre, so a map can point inside or outside it.
        """
        return [self.stages[-1].act]


@register_model(ModelSpec(name="histocnn", target_layer="stages.3.act"))
def histocnn(pretrained: bool = False, **kwargs: object) -> HistoCNN:
    if pretrained:
        from histoscan.errors import ModelError

        raise ModelError("histocnn has no ImageNet weights; train it from scratch")
    return HistoCNN(**kwargs)  # type: ignore[arg-type]


@register_model(
    ModelSpec(
        name="histocnn_wide", target_layer="stages.3.act", kwargs={"widths": (48, 96, 192, 384)}
    )
)
def histocnn_wide(pretrained: bool = False, **kwargs: object) -> HistoCNN:
    return histocnn(pretrained=pretrained, **kwargs)
