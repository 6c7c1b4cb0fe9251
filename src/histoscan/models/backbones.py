"""timm backbones with a one-logit head; ImageNet weights only when asked and online."""

from __future__ import annotations

from typing import Any

from histoscan.errors import ModelError
from histoscan.models.registry import ModelSpec, register_model

# name -> Grad-CAM target layer (the last spatial block of each architecture)
TIMM_MODELS = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "densenet121": "features.norm5",
    "efficientnet_b0": "conv_head",
    "efficientnet_b1": "conv_head",
    "efficientnet_b2": "conv_head",
    "efficientnet_b3": "conv_head",
    "convnext_tiny": "stages.3",
}


def _timm_builder(name: str):  # type: ignore[no-untyped-def]
    def build(pretrained: bool = False, **kwargs: Any) -> Any:
        import timm

        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=1, **kwargs)
        except Exception as exc:
            if pretrained:
                raise ModelError(
                    f"cannot load ImageNet weights for {name} (is this machine online? "
                    f"train without --pretrained otherwise): {exc}"
                ) from exc
            raise

    return build


for _name, _layer in TIMM_MODELS.items():
    register_model(ModelSpec(name=_name, target_layer=_layer))(_timm_builder(_name))
