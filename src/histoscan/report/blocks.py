"""What every histoscan page shares: the jinja2 base layout and stylesheet, escaping, numbers,
tables, images as data URIs, patch thumbnails.

``render_page`` lays sections (already HTML) into ``templates/base.html.j2`` with
``templates/style.css`` inline, so a page is one file that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Section:
    """One section of a page: anchor, short name for the navigation, title, HTML body."""

    key: str
    nav: str
    title: str
    body: str


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def stylesheet() -> str:
    return (TEMPLATES / "style.css").read_text(encoding="utf-8")


def render_page(
    title: str, heading: str, subtitle: str, sections: list[Section], footer: str = ""
) -> str:
    """The whole page. ``subtitle`` and ``footer`` are HTML; ``title``/``heading`` are text."""
    from markupsafe import Markup

    return (
        _environment()
        .get_template("base.html.j2")
        .render(
            title=title,
            heading=heading,
            subtitle=Markup(subtitle),
            footer=Markup(footer),
            css=Markup(stylesheet()),
            sections=[
                Section(s.key, s.nav, s.title, Markup(s.body))  # type: ignore[arg-type]
                for s in sections
            ],
        )
    )


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any) -> str:
    """A number as a reader writes it: thousands separated, no scientific notation."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(value)


def p_value(p: float) -> str:
    """A p-value: '< 0.001' below that, three decimals otherwise."""
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 HWC (or HW) array -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def img(png: bytes | None, alt: str, cls: str = "") -> str:
    """An <img> with the PNG inline as a data URI, or a short note when there is none."""
    if not png:
        return f"<p><i>{esc(alt)}: not available.</i></p>"
    return f'<img{f" class={cls}" if cls else ""} src="{png_uri(png)}" alt="{esc(alt)}">'


def tiles(items: list[tuple[np.ndarray, str, str]], scale: int = 2) -> str:
    """Patch thumbnails (image, id, caption) at ``scale``x with the centre 32x32 outlined."""
    if not items:
        return '<p class="small">none</p>'
    figs = [
        f'<figure><div class="tile" style="--s:{scale}"><img src="{png_uri(png_bytes(image))}" '
        f'alt="{esc(key)}"></div><figcaption>{esc(caption)}</figcaption></figure>'
        for image, key, caption in items
    ]
    return '<div class="grid">' + "".join(figs) + "</div>"


def table(rows: list[list[Any]], head: list[str] | None = None, cls: str = "") -> str:
    """A table; numbers are right-aligned and written by ``fmt``."""

    def cell(v: Any, tag: str = "td") -> str:
        numeric = tag == "td" and _is_number(v)
        return f"<{tag}{' class=n' if numeric else ''}>{esc(fmt(v))}</{tag}>"

    top = "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{f' class={cls}' if cls else ''}>{top}{body}</table>"


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float | np.integer | np.floating):
        return True
    try:
        float(str(v).removesuffix("%").replace(",", "").removeprefix("< "))
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
