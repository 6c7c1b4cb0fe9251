"""Small HTML building blocks for the report: the style sheet, escaping, images, tables."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
 margin:0;background:#eef0f3}
main{max-width:1140px;margin:0 auto;padding:26px 32px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:34px 0 8px;padding-top:14px;border-top:1px solid #e3e6ea}
h3{font-size:16px;margin:18px 0 6px}
.sub{color:#5b6472;margin:0 0 10px;font-size:13.5px}
nav{font-size:13px;margin:8px 0 6px}nav a{margin-right:14px;color:#2856a3;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0 10px}
.card{flex:1 1 200px;border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;
 background:#f8f9fb}
.card b{display:block;font-size:26px;line-height:1.2}.card span{font-size:12.5px;color:#5b6472}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0}
td,th{border-bottom:1px solid #e6e8eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f1f3f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#5b6472;white-space:nowrap}table.kv td.n{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.row>*{flex:0 1 auto;min-width:0}.half{max-width:calc(50% - 9px)}
img{max-width:100%;height:auto}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:8px 12px;margin:10px 0}
details{margin:8px 0;font-size:13.5px}code{background:#f1f3f5;padding:1px 4px;border-radius:3px}
footer{margin-top:40px;font-size:12px;color:#7a8290}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def img(png: bytes | None, alt: str, cls: str = "") -> str:
    """An <img> with the PNG inline as a data URI, or a short note when there is none."""
    if not png:
        return f"<p><i>{esc(alt)}: not available.</i></p>"
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img{f" class={cls}" if cls else ""} src="{uri}" alt="{esc(alt)}">'


def table(rows: list[list[Any]], head: list[str] | None = None, cls: str = "") -> str:
    """A table; numbers are right-aligned."""

    def cell(v: Any, tag: str = "td") -> str:
        numeric = tag == "td" and _is_number(v)
        return f"<{tag}{' class=n' if numeric else ''}>{esc(v)}</{tag}>"

    top = "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{f' class={cls}' if cls else ''}>{top}{body}</table>"


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(str(v).removesuffix("%"))
    except (TypeError, ValueError):
        return False
    return True


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def pct(x: float | None) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}%"


def plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
