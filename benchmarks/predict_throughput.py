"""Inference images/s for the bundled model and resnet18 on real patches, per engine.

    python benchmarks/predict_throughput.py [--batch 256] [--repeats 5] [--threads 2]

Engines: eager fp32 NCHW (the plain baseline), eager fp32 channels_last, bf16 autocast
channels_last, onnxruntime fp32, onnxruntime static int8 (QDQ, calibrated on 256 real patches),
and ``Predictor`` as ``histoscan predict`` runs it. Also prints achieved GFLOP/s next to large
fp32 and bf16 matmuls measured in the same run. Median of ``--repeats`` timed batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from common import REAL_TRAIN, gflop_per_image, print_machine, timed
from histoscan.data.sources import open_source
from histoscan.models.bundle import ModelFile, load_model_file, memory_model_file
from histoscan.models.export import export_onnx, quantize_onnx
from histoscan.models.registry import create_model, model_spec
from histoscan.predict import Predictor


def engines(mf: ModelFile, images: np.ndarray) -> dict[str, Callable[[], object]]:
    net = mf.net.eval()
    x = mf.inference_net().preprocess(torch.from_numpy(images)).contiguous()  # NCHW float
    x_cl = x.contiguous(memory_format=torch.channels_last)
    net_cl = mf.inference_net().net.to(memory_format=torch.channels_last)
    fp32_onnx = export_onnx(mf)
    int8_onnx = quantize_onnx(fp32_onnx, images)
    import onnxruntime as ort

    sess32 = ort.InferenceSession(fp32_onnx, providers=["CPUExecutionProvider"])
    sess8 = ort.InferenceSession(int8_onnx, providers=["CPUExecutionProvider"])
    # as `histoscan predict` loads it: the auto engine picks an int8 ONNX file beside the model
    predictor = Predictor.load(mf.path) if mf.path.is_file() else None

    def eager(
        model: torch.nn.Module, inp: torch.Tensor, bf16: bool = False
    ) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(inp)

        return run

    runs = {
        "eager fp32 NCHW (baseline)": eager(net, x),
        "eager fp32 channels_last": eager(net_cl, x_cl),
        "bf16 autocast channels_last": eager(net_cl, x_cl, bf16=True),
        "onnxruntime fp32": lambda: sess32.run(None, {"images": images}),
        "onnxruntime int8 static": lambda: sess8.run(None, {"images": images}),
    }
    if predictor is not None:
        name = f"histoscan predict ({predictor.engine.name})"
        runs[name] = lambda: predictor.predict_proba(images, tta="none")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = open_source(REAL_TRAIN).read_many(range(args.batch))
    print_machine()
    torch.manual_seed(0)
    resnet = memory_model_file(model_spec("resnet18"), create_model("resnet18").eval())
    for title, mf in (("bundled model", load_model_file()), ("resnet18", resnet)):
        gflop = gflop_per_image(mf.net.eval())
        print(f"\n{title} ({mf.spec.name}, {gflop:.2f} GFLOP/image, batch {args.batch})")
        print(f"{'engine':32s} {'images/s':>9s} {'GFLOP/s':>8s} {'vs baseline':>11s}")
        base = None
        for name, fn in engines(mf, images).items():
            rate = args.batch / timed(fn, args.repeats)
            base = base or rate
            print(f"{name:32s} {rate:9.0f} {rate * gflop:8.0f} {rate / base:10.2f}x")


if __name__ == "__main__":
    main()
