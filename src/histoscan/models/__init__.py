"""Model registry, our own small CNN, and the model file (weights + preprocessing + calibration)."""

from histoscan.models.registry import ModelSpec, create_model, list_models, model_spec

__all__ = ["ModelSpec", "create_model", "list_models", "model_spec"]
