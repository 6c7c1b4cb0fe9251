"""Grad-CAM of the tumour logit, and overlays that show it on the patch.

The target is the network's own ``gradcam_layers()`` where it has one (histocnn and its
ensembles: the 6x6 map before the last pooling, so a cell is 16 px, half the labelled centre),
else the layer its spec names (``ModelSpec.target_layer``, resolved with ``get_submodule``):
the model decides where it is looked at, nothing here guesses. The network sees exactly what
prediction feeds it, through ``InferenceNet.preprocess``.
"""

from __future__ import annotations

import functools

import numpy as np

from histoscan.errors import ModelError
from histoscan.models.modelfile import ModelFile
from histoscan.predict import check_images

CENTRE_PX = 32  # the PCam label refers to the centre 32x32 pixels of a 96x96 patch


def centre_box(size_px: int, centre_px: int = CENTRE_PX) -> tuple[int, int]:
    """First and one-past-last pixel of the centre region along one axis."""
    lo = (size_px - centre_px) // 2
    return lo, lo + centre_px


class GradCAM:
    """Grad-CAM maps of the tumour logit at the layer the model's spec names.

    Args:
        mf: a loaded model file with torch weights.
        batch_size: patches per forward/backward pass.
    """

    def __init__(self, mf: ModelFile, batch_size: int = 32) -> None:
        spec = mf.spec
        if mf.net is None:
            raise ModelError(f"{mf.path}: Grad-CAM needs torch weights; use the .pt model file")
        self.target_layers = self._layers(mf.net, spec)
        self.layer_name = _layer_names(mf.net, self.target_layers)
        self.infer = mf.inference_net()  # preprocessing exactly as prediction does it
        self.batch_size = batch_size

    @staticmethod
    def _layers(net: object, spec: object) -> list:
        finer = getattr(net, "gradcam_layers", None)
        if finer is not None:
            return list(finer())
        name = getattr(spec, "target_layer", None)
        if not name:
            raise ModelError(f"model {spec.name} names no Grad-CAM target layer in its spec")  # type: ignore[attr-defined]
        try:
            return [net.get_submodule(name)]  # type: ignore[attr-defined]
        except AttributeError as exc:
            raise ModelError(f"model {spec.name} has no layer {name!r}") from exc  # type: ignore[attr-defined]

    def explain(self, images: np.ndarray) -> np.ndarray:
        """Maps (N, H, W) float32 in [0, 1] of uint8 patches (N, H, W, 3); 1 = most tumour evidence.

        Each map is scaled to its own maximum, so maps compare where, not how much. A patch with no
        positive evidence for tumour anywhere gets an all-zero map.
        """
        import torch
        from pytorch_grad_cam import GradCAM as LibGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        images = check_images(images)
        n, h, w, _ = images.shape
        maps = np.zeros((n, h, w), dtype=np.float32)
        # not `with`: the library's __exit__ swallows IndexError, which would hide a failure
        cam = LibGradCAM(model=self.infer.net, target_layers=self.target_layers)
        try:
            for start in range(0, n, self.batch_size):
                batch = torch.from_numpy(images[start : start + self.batch_size].copy())
                x = self.infer.preprocess(batch)  # (B, 3, input_px, input_px)
                # the net returns (B, 1): output 0 is the tumour logit
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * len(batch))
                maps[start : start + len(batch)] = _resize_maps(out, h, w)  # (B, H, W)
        finally:
            cam.activations_and_grads.release()
        return np.clip(np.nan_to_num(maps, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _layer_names(net: object, layers: list) -> str:
    """'members.0.stages.3.act, members.1.stages.3.act' for the captions."""
    names = {id(m): n for n, m in net.named_modules()}  # type: ignore[attr-defined]
    return ", ".join(names.get(id(layer), type(layer).__name__) for layer in layers)


def _resize_maps(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, h', w') maps resized to (B, h, w) bilinearly (input_px may differ from the patch)."""
    if maps.shape[1:] == (h, w):
        return maps
    import torch

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]  # (B, 1, h', w')
    t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def centre_fraction(maps: np.ndarray, centre_px: int = CENTRE_PX) -> np.ndarray:
    """Share of each map's total weight inside the centre region, (N,); NaN for an empty map.

    The centre is 1/9 of a 96x96 patch, so a map spread evenly scores 0.11.
    """
    lo, hi = centre_box(maps.shape[-1], centre_px)
    total = maps.sum(axis=(1, 2))
    inside = maps[:, lo:hi, lo:hi].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


@functools.cache
def _jet_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a map in [0, 1] (H, W), coloured blue (0) to red (1), over uint8 RGB (H, W, 3)."""
    if cam.shape != image.shape[:2]:
        raise ValueError(f"map {cam.shape} does not match image {image.shape[:2]}")
    levels = np.clip(np.nan_to_num(cam) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heat = _jet_lut()[levels]  # (H, W, 3)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def with_centre_box(
    image: np.ndarray, scale: int = 2, colour: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """The image enlarged ``scale`` times (nearest) with the labelled centre region outlined."""
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1).copy()  # (sH, sW, 3)
    lo, hi = (v * scale for v in centre_box(image.shape[0]))
    t = max(1, scale // 2)  # line thickness
    big[lo:hi, lo : lo + t] = colour
    big[lo:hi, hi - t : hi] = colour
    big[lo : lo + t, lo:hi] = colour
    big[hi - t : hi, lo:hi] = colour
    return big
