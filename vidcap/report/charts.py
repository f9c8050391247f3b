"""Histograms of the build's value distributions as standalone SVG, drawn with matplotlib.

Rebuilds must be byte-identical (the report is a build output, and a changed file would look like a
changed result): no date in the metadata, and the ids matplotlib hashes are salted with the chart's
name instead of a random salt. Each bar carries a ``<title>`` (hover tooltip) and its count as
``data-count``, so a browser and the tests can read the numbers back.
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from collections import Counter

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SVG_NS = "http://www.w3.org/2000/svg"
BAR_COLOR = "#3b7dd8"
STYLE = {
    "svg.fonttype": "none",  # text stays text: small files, the browser's font, searchable labels
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
ET.register_namespace("dc", "http://purl.org/dc/elements/1.1/")
ET.register_namespace("cc", "http://creativecommons.org/ns#")
ET.register_namespace("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#")


def histogram_bins(counts: Counter, max_bins: int = 30) -> list[tuple[float, float, int]]:
    """(low, high, count) bins: one per integer when the range is small, else equal-width bins."""
    if not counts:
        return []
    lo, hi = min(counts), max(counts)
    span = hi - lo + 1
    width = 1 if span <= max_bins else math.ceil(span / max_bins)
    bins = [[lo + i * width, lo + (i + 1) * width, 0] for i in range(math.ceil(span / width))]
    for value, count in counts.items():
        bins[int((value - lo) // width)][2] += count
    return [tuple(b) for b in bins]


def bin_label(low: float, high: float) -> str:
    """``4`` for a one-value bin, ``4-7`` for the values 4..7."""
    return f"{low:g}" if high - low == 1 else f"{low:g}-{high - 1:g}"


def svg_histogram(
    counts: Counter, title: str, xlabel: str, ylabel: str = "records", name: str = "histogram"
) -> str:
    """A bar chart of ``counts`` (value -> records) as standalone SVG markup (480 x 260 px)."""
    bins = histogram_bins(counts)
    with matplotlib.rc_context({**STYLE, "svg.hashsalt": f"vidcap-{name}"}):
        figure = Figure(figsize=(4.8, 2.6), dpi=100)
        axes = figure.add_subplot()
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if bins:
            draw_bars(axes, bins, name)
        else:
            axes.text(0.5, 0.5, "no values", transform=axes.transAxes, ha="center", color="#666")
            axes.set_xticks([])
            axes.set_yticks([])
        figure.tight_layout()
        buffer = io.StringIO()
        FigureCanvasSVG(figure).print_svg(buffer, metadata={"Date": None})
    return annotate_bars(buffer.getvalue(), bins, name)


def draw_bars(axes, bins: list[tuple[float, float, int]], name: str) -> None:
    """One bar per bin, ids ``NAME-barN`` (unique when the summary page inlines every chart).

    A few bins get a tick each; many get ~8 integer ticks.
    """
    centers = [(low + high - 1) / 2 for low, high, _ in bins]  # a bin holds the values low..high-1
    width = bins[0][1] - bins[0][0]
    bars = axes.bar(centers, [c for _, _, c in bins], width=0.9 * width, color=BAR_COLOR)
    for i, bar in enumerate(bars):
        bar.set_gid(f"{name}-bar{i}")
    if len(bins) <= 10:
        axes.set_xticks(centers, [bin_label(low, high) for low, high, _ in bins])
    else:
        axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    middle, half = (centers[0] + centers[-1]) / 2, (max(len(bins), 5) + 0.5) * width / 2  # 1 value: no slab
    axes.set_xlim(middle - half, middle + half)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))


def annotate_bars(svg: str, bins: list[tuple[float, float, int]], name: str) -> str:
    """Give each bar group (``id="NAME-barN"``) class="bar", its count and a hover title."""
    root = ET.fromstring(svg)
    for group in root.iter(f"{{{SVG_NS}}}g"):
        gid = group.get("id", "")
        if gid.startswith(f"{name}-bar") and gid[len(name) + 4 :].isdigit():
            low, high, count = bins[int(gid[len(name) + 4 :])]
            group.set("class", "bar")
            group.set("data-count", str(count))
            tooltip = ET.Element(f"{{{SVG_NS}}}title")
            tooltip.text = f"{bin_label(low, high)}: {count}"
            group.insert(0, tooltip)
    return ET.tostring(root, encoding="unicode") + "\n"
