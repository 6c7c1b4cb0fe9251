"""Render an HTML file to a PNG screenshot with headless Chromium (Debian's /usr/bin/chromium).

    python scripts/render_html.py report.html docs/img/report_top.png [--width 1280 --height 1800]

Chromium runs with a throw-away profile and no network features, so the page must be
self-contained (as histoscan reports are). Install it with ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    sys.exit("chromium not found; install it with `apt-get install -y chromium`")


def render(
    html: Path, png: Path, width: int = 1280, height: int = 1800, timeout_s: float = 120.0
) -> None:
    """Screenshot the top ``width`` x ``height`` pixels of ``html`` into ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            html.resolve().as_uri(),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()
    if not args.html.is_file():
        sys.exit(f"{args.html}: no such file")
    render(args.html, args.png, args.width, args.height)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
