"""`histoscan predict` against the plain Kaggle-kernel pipeline, whole process, paired in one run.

    python benchmarks/peer_pipeline.py [--n 4096] [--repeats 3] [--tta none]

Both sides score the same real 96x96 `.tif` files with the same weights (the bundled model) and
write a submission CSV, each as a fresh process timed from start to exit, with the same
allocator (whatever LD_PRELOAD this script gets), alternating so that machine drift hits both.

The peer is what most Kaggle kernels for this competition do: PIL.open -> ToTensor ->
Normalize -> DataLoader (workers 0) -> eager fp32 NCHW -> sigmoid(logit / T) -> CSV; with
``--tta d4`` it averages the eight dihedral views of each batch, as the kernels that used TTA did.
Also prints start-up time and peak memory of a one-patch `histoscan predict`.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REAL_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-real" / "train"
HISTOSCAN = Path(sys.executable).with_name("histoscan")

PEER = textwrap.dedent(
    """
    import csv, sys
    from pathlib import Path
    import torch
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from histoscan.models.bundle import load_model_file

    folder, out, tta = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    mf = load_model_file()  # the same weights as `histoscan predict`, plain eager fp32 NCHW
    net = mf.torch_net().eval()
    tf = T.Compose([T.ToTensor(), T.Normalize(mf.spec.mean, mf.spec.std)])
    files = sorted(folder.glob("*.tif"))

    class Patches(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return tf(Image.open(files[i]).convert("RGB"))

    probs = []
    with torch.no_grad():
        for x in DataLoader(Patches(), batch_size=256, num_workers=0):
            if tta == "d4":
                views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]
                logit = torch.stack([net(v)[:, 0] for v in views]).mean(0)
            else:
                logit = net(x)[:, 0]
            probs.append(torch.sigmoid(logit / mf.temperature))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label"])
        for f, p in zip(files, torch.cat(probs).tolist()):
            w.writerow([f.stem, f"{p:.6f}"])
    """
)


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, as its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def write_tifs(folder: Path, n: int) -> dict[str, int]:
    """The first ``n`` real labelled patches as uncompressed .tif, like Kaggle's files."""
    import tifffile

    from histoscan.data.sources import open_source

    source = open_source(REAL_TRAIN)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(folder / f"{source.ids[i]}.tif", source.read(i), photometric="rgb")
    return {source.ids[i]: int(source.labels[i]) for i in range(n)}


def read_probs(path: Path) -> dict[str, float]:
    return {r["id"]: float(r["label"]) for r in csv.DictReader(open(path))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", choices=("none", "d4"), default="none")
    args = parser.parse_args()
    from histoscan.models.engines import physical_cores

    print(
        f"machine: {os.cpu_count()} CPUs ({physical_cores()} cores used), "
        f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '-')}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        labels = write_tifs(tmp_path / "patches", args.n)
        (tmp_path / "peer.py").write_text(PEER)
        ours_cmd = [str(HISTOSCAN), "predict", str(tmp_path / "patches"), "-o"]
        ours_cmd += [str(tmp_path / "ours.csv"), "--tta", args.tta, "--quiet"]
        peer_cmd = [sys.executable, str(tmp_path / "peer.py"), str(tmp_path / "patches")]
        peer_cmd += [str(tmp_path / "peer.csv"), args.tta]
        times: dict[str, list[float]] = {"histoscan predict": [], "Kaggle-kernel pipeline": []}
        peaks: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, cmd in (
                ("Kaggle-kernel pipeline", peer_cmd),
                ("histoscan predict", ours_cmd),
            ):
                seconds, peak = run(cmd)
                times[name].append(seconds)
                peaks[name] = max(peaks.get(name, 0.0), peak)
        ours, peer = read_probs(tmp_path / "ours.csv"), read_probs(tmp_path / "peer.csv")
        from sklearn.metrics import roc_auc_score

        keys = sorted(labels)
        y = [labels[k] for k in keys]
        diff = np.abs(np.array([ours[k] for k in keys]) - [peer[k] for k in keys])
        print(f"\n{args.n} real .tif patches, TTA {args.tta}, median of {args.repeats} paired runs")
        print(
            f"{'pipeline':26s} {'seconds':>8s} {'patches/s':>10s} {'peak MiB':>9s} {'ROC AUC':>8s}"
        )
        for name, probs in (("Kaggle-kernel pipeline", peer), ("histoscan predict", ours)):
            sec = statistics.median(times[name])
            auc = roc_auc_score(y, [probs[k] for k in keys])
            print(f"{name:26s} {sec:8.2f} {args.n / sec:10.0f} {peaks[name]:9.0f} {auc:8.4f}")
        ratio = statistics.median(times["Kaggle-kernel pipeline"]) / statistics.median(
            times["histoscan predict"]
        )
        print(
            f"speed-up: {ratio:.2f}x; |p_ours - p_peer| "
            f"max {diff.max():.4f}, mean {diff.mean():.4f}"
        )

        one = tmp_path / "one"
        one.mkdir()
        first = next(iter(sorted((tmp_path / "patches").glob("*.tif"))))
        (one / first.name).write_bytes(first.read_bytes())
        runs = [
            run([str(HISTOSCAN), "predict", str(one), "-o", str(tmp_path / "one.csv"), "--quiet"])
            for _ in range(5)
        ]
        print(
            f"one-patch `histoscan predict` (D4): {statistics.median(r[0] for r in runs):.2f} s "
            f"start to exit, peak {max(r[1] for r in runs):.0f} MiB"
        )


if __name__ == "__main__":
    main()
