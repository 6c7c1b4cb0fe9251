"""Training images/s (forward + backward + AdamW step) for the bundled architecture and resnet18.

    python benchmarks/train_throughput.py [--batch 128] [--repeats 5] [--threads 2]

Layouts and precisions: fp32 NCHW, fp32 channels_last, bf16 autocast channels_last. Prints the
achieved GFLOP/s (3x the forward FLOPs per image for a training step) next to large matmuls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from common import gflop_per_image, print_machine, timed
from histoscan.models.registry import create_model


def step_fn(
    net: torch.nn.Module, channels_last: bool, bf16: bool, batch: int
) -> Callable[[], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 96, 96).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,)).float()

    def step() -> object:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = net(x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    for name in ("histocnn", "resnet18"):
        torch.manual_seed(0)
        gflop = gflop_per_image(create_model(name).eval())
        print(f"\n{name} ({gflop:.2f} GFLOP/image forward, batch {args.batch})")
        print(f"{'variant':30s} {'images/s':>9s} {'GFLOP/s':>8s}")
        for label, cl, bf16 in (
            ("fp32 NCHW", False, False),
            ("fp32 channels_last", True, False),
            ("bf16 autocast channels_last", True, True),
        ):
            torch.manual_seed(0)
            fn = step_fn(create_model(name), cl, bf16, args.batch)
            rate = args.batch / timed(fn, args.repeats)
            print(f"{label:30s} {rate:9.0f} {rate * 3 * gflop:8.0f}")


if __name__ == "__main__":
    main()
