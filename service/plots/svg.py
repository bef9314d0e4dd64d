"""Line charts as standalone SVG text: axes with round ticks, one polyline per series."""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 800, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50  # room for the tick labels, title and legend


@dataclass(frozen=True)
class Series:
    name: str  # also the element's id: "train_loss", "eval_loss"
    label: str
    color: str
    points: Sequence[tuple[float, float]]  # (step, value), finite values only
    dots: bool = False  # sparse series (eval points) get a dot per point


# Characters XML 1.0 forbids in a document (C0 controls but tab, newline and return; lone
# surrogates; U+FFFE and U+FFFF): one in a name would make the SVG not well-formed.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    """Text for an element's content: escaped, and what XML cannot hold shown as U+FFFD.
    Names keep the name rule (jobspec/names.py); this holds whatever a title holds."""
    return escape(_NOT_XML.sub("\ufffd", value))


def _attr(value: str) -> str:
    """A quoted attribute value, likewise."""
    return quoteattr(_NOT_XML.sub("\ufffd", value))


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering the range."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:g}"


def line_chart(title: str, series: Sequence[Series], x_label: str = "step",
               y_label: str = "loss") -> str:
    """The chart as an SVG document. With no points at all it says so instead of axes."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<title>{_text(title)}</title>',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{_text(title)}</text>']
    points = [p for s in series for p in s.points]
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                     'fill="#666">no metrics yet</text></svg>')
        return "\n".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w, 2)

    def py(y: float) -> float:
        return round(TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h, 2)

    grid = ['<g id="grid" stroke="#e5e5e5">']
    labels = ['<g id="ticks" fill="#333">']
    for x in x_ticks:
        grid.append(f'<line x1="{px(x)}" y1="{TOP}" x2="{px(x)}" y2="{TOP + plot_h}"/>')
        labels.append(f'<text x="{px(x)}" y="{TOP + plot_h + 16}" '
                      f'text-anchor="middle">{_fmt(x)}</text>')
    for y in y_ticks:
        grid.append(f'<line x1="{LEFT}" y1="{py(y)}" x2="{LEFT + plot_w}" y2="{py(y)}"/>')
        labels.append(f'<text x="{LEFT - 6}" y="{py(y) + 4}" text-anchor="end">{_fmt(y)}</text>')
    parts += [*grid, "</g>", *labels, "</g>",
              f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
              'stroke="#999"/>',
              f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" '
              f'text-anchor="middle">{_text(x_label)}</text>',
              f'<text transform="translate(16 {TOP + plot_h / 2}) rotate(-90)" '
              f'text-anchor="middle">{_text(y_label)}</text>']
    legend_x = WIDTH - RIGHT
    for s in reversed(series):
        if not s.points:
            continue
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in s.points)
        parts.append(f'<g id={_attr(s.name)} data-points="{len(s.points)}">')
        parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5" '
                     f'points="{coords}"/>')
        if s.dots:
            parts += [f'<circle cx="{px(x)}" cy="{py(y)}" r="2.5" fill="{s.color}"/>'
                      for x, y in s.points]
        parts.append("</g>")
        legend_x -= 8 * len(s.label) + 30
        parts.append(f'<line x1="{legend_x}" y1="18" x2="{legend_x + 18}" y2="18" '
                     f'stroke="{s.color}" stroke-width="3"/><text x="{legend_x + 22}" '
                     f'y="22">{_text(s.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
