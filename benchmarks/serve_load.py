"""Load test of ``histoscan serve``: throughput, latency percentiles and errors.

    .venv/bin/python benchmarks/serve_load.py [--requests 2000] [--concurrency 16]
        [--burst 30] [--burst-size 64] [--engine auto|onnx|onnx-int8|torch] [--tta d4]
        [--model PATH]

Starts the service in a subprocess on 127.0.0.1 (a free port), waits for /healthz, then runs two
bounded scenarios with an async httpx client on real patches from the sample:

- single: ``--requests`` one-patch POST /v1/predict calls, ``--concurrency`` in flight;
- burst: ``--burst`` requests of ``--burst-size`` patches each, all sent at once.

Every response must be 200 (the error count is printed; the exit code is 1 if it is not 0).
"mean batch" is patches per forward pass inside the server, from its micro-batcher's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pcam-real" / "train"
SERVER = """
import sys, uvicorn
from histoscan.predict import Predictor
from histoscan.serve import ServeSettings, create_app
model, engine, tta, port = sys.argv[1] or None, sys.argv[2], sys.argv[3], int(sys.argv[4])
app = create_app(Predictor.load(model, engine=engine), ServeSettings(tta=tta))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


@dataclass
class Result:
    name: str
    requests: int
    patches: int
    errors: int
    wall_s: float
    latencies_s: list[float]
    mean_batch: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SERVER, str(args.model or ""), args.engine, args.tta, str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise SystemExit("server did not answer /healthz within 120 s")


def batching(url: str) -> tuple[float, float]:
    stats = httpx.get(f"{url}/healthz").json()["batching"]
    return stats["batches"], stats["patches"]


async def run_scenario(
    url: str, name: str, bodies: list[list[tuple[str, bytes]]], concurrency: int
) -> Result:
    """POST every body (a list of (file name, bytes)) with ``concurrency`` requests in flight."""
    before = batching(url)
    latencies: list[float] = []
    errors = 0
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for body in queue:  # the shared iterator hands each body to one worker
            files = [("files", (fname, data, "image/webp")) for fname, data in body]
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/predict", files=files)
                ok = response.status_code == 200 and len(response.json()["results"]) == len(body)
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    start = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall_s = time.perf_counter() - start
    after = batching(url)
    forwards, patches = after[0] - before[0], after[1] - before[1]
    return Result(
        name,
        len(bodies),
        sum(len(b) for b in bodies),
        errors,
        wall_s,
        latencies,
        patches / forwards if forwards else 0.0,
    )


def print_table(results: list[Result]) -> None:
    header = (
        "scenario",
        "requests",
        "patches",
        "errors",
        "wall s",
        "req/s",
        "patches/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean batch",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in results:
        p50, p95, p99 = np.percentile(np.asarray(r.latencies_s) * 1000, [50, 95, 99])
        cells = (
            r.name,
            r.requests,
            r.patches,
            r.errors,
            f"{r.wall_s:.1f}",
            f"{r.requests / r.wall_s:.1f}",
            f"{r.patches / r.wall_s:.1f}",
            f"{p50:.0f}",
            f"{p95:.0f}",
            f"{p99:.0f}",
            f"{r.mean_batch:.1f}",
        )
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="single-patch requests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--burst", type=int, default=30, help="batch requests sent at once")
    parser.add_argument("--burst-size", type=int, default=64, help="patches per batch request")
    parser.add_argument("--engine", choices=("auto", "onnx", "onnx-int8", "torch"), default="auto")
    parser.add_argument("--tta", default="d4", help="none, flip or d4 (serve's default: d4)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: bundled)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    files = sorted(args.data.glob("*.webp"))[:512]
    if not files:
        raise SystemExit(f"{args.data}: no .webp patches")
    patches = [(f.name, f.read_bytes()) for f in files]
    cycle = itertools.cycle(patches)
    singles = [[next(cycle)] for _ in range(args.requests)]
    bursts = [[next(cycle) for _ in range(args.burst_size)] for _ in range(args.burst)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        asyncio.run(run_scenario(url, "warm-up", singles[:32], args.concurrency))
        results = [
            asyncio.run(
                run_scenario(url, f"single x{args.concurrency}", singles, args.concurrency)
            ),
            asyncio.run(run_scenario(url, f"burst {args.burst_size}-patch", bursts, args.burst)),
        ]
    finally:
        proc.terminate()
        proc.wait(30)
    load = os.getloadavg()
    print(
        f"engine {args.engine}, TTA {args.tta}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} at the end, Python {sys.version.split()[0]}"
    )
    print_table(results)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
