"""The build report: a summary page, histograms (SVG) and a caption gallery (one self-contained HTML).

Snakemake's ``--report report.html`` embeds each single-file output as a data: URI, so every file
written here is self-contained: images are inline (SVG markup, JPEG data: URIs), no external links.
The gallery pairs each output record with its frames manifest entry the way the merge step does
(the k-th input record of shard s is entry k of that shard's manifest), checked by record digest.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from vidcap.atomic import atomic_open, read_json
from vidcap.records import DEFAULT_KEYS, iter_records, record_digest, record_media
from vidcap.shards import shard_of
from vidcap.stats import (
    DISTRIBUTIONS,
    describe,
    format_summary,
    is_tiny_model,
    iter_output,
    read_benchmarks,
    summarize_output,
)

GALLERY_SAMPLE = 48  # records shown in the gallery of a big build (evenly spaced), plus errors
GALLERY_MAX_ERRORS = 500  # every error up to this many; the reasons table counts all of them
THUMB_HEIGHT = 64
THUMBS_PER_VIDEO = 8
HISTOGRAMS = {  # output file stem -> summary value key
    "hist_frames": "frames",
    "hist_prompt_tokens": "prompt_tokens",
    "hist_output_tokens": "output_tokens",
    "hist_caption_words": "caption_words",
}
HISTOGRAM_TITLES = {
    "frames": "Sampled frames per video",
    "prompt_tokens": "Prompt tokens per record",
    "output_tokens": "Output tokens per caption",
    "caption_words": "Caption length (words)",
}
HISTOGRAM_XLABELS = dict(DISTRIBUTIONS, frames="sampled frames per video")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TINY_NOTE = (
    "The model is the random-weight tiny test model (VIDCAP_TINY_MODEL.txt): "
    "its captions are gibberish by design; only their structure means anything."
)


# ------------------------------------------------------------------------------------ histograms
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


def svg_histogram(
    counts: Counter, title: str, xlabel: str, ylabel: str = "records", width: int = 480, height: int = 260
) -> str:
    """A bar chart as standalone SVG markup (no plotting library needed)."""
    bins = histogram_bins(counts)
    left, right, top, bottom = 48, 12, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
        f"{html.escape(title)}</text>",
    ]
    if not bins:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">no values</text>'
        )
    else:
        peak = max(b[2] for b in bins)
        bar_w = plot_w / len(bins)
        for i, (low, high, count) in enumerate(bins):
            h = plot_h * count / peak
            label = f"{low:g}" if high - low == 1 else f"{low:g}-{high - 1:g}"
            out.append(
                f'<rect class="bar" x="{left + i * bar_w + 1:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" fill="#3b7dd8" data-count="{count}">'
                f"<title>{label}: {count}</title></rect>"
            )
        step = max(1, math.ceil(len(bins) / 8))  # at most ~8 x labels
        for i in range(0, len(bins), step):
            low, high, _ = bins[i]
            x = left + (i + 0.5) * bar_w
            text = f"{low:g}" if high - low == 1 else f"{low:g}-{high - 1:g}"
            out.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{text}</text>')
        out.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>')
        out.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>'
    )
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{html.escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------- contact sheet
def thumbnail_indices(n_frames: int, limit: int = THUMBS_PER_VIDEO) -> list[int]:
    """Up to ``limit`` frame positions spread evenly from first to last."""
    if n_frames <= limit:
        return list(range(n_frames))
    return np.linspace(0, n_frames - 1, limit).round().astype(int).tolist()


def contact_sheet(
    arrays: list[np.ndarray], thumb_height: int = THUMB_HEIGHT, limit: int = THUMBS_PER_VIDEO, gap: int = 2
):
    """One row of small thumbnails per array (T x H x W x 3 frames, or H x W x 3 for an image)."""
    from PIL import Image

    rows = []
    for array in arrays:
        frames = array[None] if array.ndim == 3 else array
        thumbs = []
        for i in thumbnail_indices(len(frames), limit):
            frame = np.asarray(frames[i])
            w = max(1, round(frame.shape[1] * thumb_height / frame.shape[0]))
            thumbs.append(Image.fromarray(frame).resize((w, thumb_height), Image.BILINEAR))
        rows.append(thumbs)
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in rows)
    height = len(rows) * thumb_height + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    for r, row in enumerate(rows):
        x = 0
        for thumb in row:
            sheet.paste(thumb, (x, r * (thumb_height + gap)))
            x += thumb.width + gap
    return sheet


def jpeg_data_uri(image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------- gallery
def gallery_selection(
    n_records: int,
    error_indices: list[int],
    sample: int = GALLERY_SAMPLE,
    max_errors: int = GALLERY_MAX_ERRORS,
) -> list[int]:
    """Record indices to show: all of a small build; else ``sample`` evenly spaced plus the errors."""
    if n_records <= sample:
        return list(range(n_records))
    chosen = {i * n_records // sample for i in range(sample)}
    chosen.update(error_indices[:max_errors])
    return sorted(chosen)


def gallery_items(
    input_path: str, output_path: str, manifests: list[str], keys: dict, selected: list[int]
) -> list[dict]:
    """The selected output records with their manifest entries (frames), in output order.

    ``manifests``: one per shard, in shard order (shard s of the records is ``manifests[s]``).
    """
    keys = {**DEFAULT_KEYS, **keys}
    n_shards = len(manifests)
    wanted = set(selected)
    positions = [0] * n_shards
    items = []
    outputs = iter_output(output_path)
    for index, record in iter_records(input_path, keys):
        out_index, out = next(outputs)
        shard = shard_of(record, keys, n_shards)
        position = positions[shard]
        positions[shard] += 1
        if index in wanted:
            items.append(
                {
                    "index": out_index,
                    "record": out,
                    "shard": shard,
                    "position": position,
                    "digest": record_digest(record),
                    "entry": None,
                }
            )
    by_shard = defaultdict(list)
    for item in items:
        by_shard[item["shard"]].append(item)
    for shard, shard_items in by_shard.items():
        path = Path(manifests[shard])
        entries = read_json(path)["records"] if path.exists() else []
        for item in shard_items:
            entry = entries[item["position"]] if item["position"] < len(entries) else None
            if entry is not None and entry.get("digest") == item["digest"]:
                item["entry"] = entry
    return items


def record_strip(entry: dict | None) -> tuple[str | None, str]:
    """(JPEG data URI of the record's contact sheet or None, a note on what it shows)."""
    if entry is None:
        return None, "no frames manifest entry for this record"
    arrays, notes = [], []
    for media in entry.get("videos", []) + entry.get("images", []):
        if not media or "frames" not in media:
            continue
        try:
            array = np.load(media["frames"], mmap_mode="r")
        except (OSError, ValueError):
            notes.append(f"{os.path.basename(media['path'])}: frames no longer in the cache")
            continue
        arrays.append(array)
        meta = media.get("meta", {})
        if array.ndim == 4:
            times = [i / meta["fps"] for i in meta.get("frames_indices", [])] if meta.get("fps") else []
            span = f" at {times[0]:.1f}-{times[-1]:.1f} s" if times else ""
            shown = len(thumbnail_indices(len(array)))
            notes.append(
                f"{os.path.basename(media['path'])}: {len(array)} frames{span}, "
                f"{meta.get('width')}x{meta.get('height')} from "
                f"{meta.get('source_width')}x{meta.get('source_height')}"
                + (f" (showing {shown})" if shown < len(array) else "")
            )
        else:
            notes.append(f"{os.path.basename(media['path'])}: image {array.shape[1]}x{array.shape[0]}")
    if not arrays:
        return None, "; ".join(notes) or "no frames (the media could not be read)"
    return jpeg_data_uri(contact_sheet(arrays)), "; ".join(notes)


def clean_text(text: str) -> str:
    """HTML-escaped text with control characters made visible (random models emit them)."""
    return html.escape(CONTROL_CHARS.sub("\ufffd", text))


def gallery_card(item: dict, keys: dict) -> str:
    record = item["record"]
    meta = record.get("caption_meta") or {}
    status = meta.get("status", "unknown")
    uri, note = record_strip(item["entry"])
    media = record_media(record, keys)
    facts = [
        f"{meta.get('frames')} frames" if meta.get("frames") is not None else None,
        f"{meta.get('prompt_tokens')} prompt tokens" if meta.get("prompt_tokens") is not None else None,
        f"{meta.get('output_tokens')} output tokens" if meta.get("output_tokens") is not None else None,
    ]
    strip = (
        f'<img class="strip" src="{uri}" alt="sampled frames of record {item["index"]}">'
        if uri
        else '<div class="strip none">no frames</div>'
    )
    caption = record.get(keys["caption"])
    text = (
        f'<p class="caption">{clean_text(caption)}</p>'
        if isinstance(caption, str)
        else '<p class="caption none">(no caption)</p>'
    )
    error = f'<p class="error">{clean_text(meta["error"])}</p>' if meta.get("error") else ""
    return (
        f'<div class="record {html.escape(status)}" data-index="{item["index"]}" '
        f'data-status="{html.escape(status)}">\n'
        f'<div class="frames">{strip}<p class="note">{clean_text(note)}</p></div>\n'
        f'<div class="text"><p class="head"><span class="badge">{html.escape(status)}</span> '
        f"#{item['index']} {clean_text(', '.join(media))}"
        f'<span class="facts">{" · ".join(f for f in facts if f)}</span></p>\n{error}{text}</div>\n</div>\n'
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.warning { background: #fff3cd; border: 1px solid #e0c36b; padding: 6px 10px; border-radius: 4px; }
table { border-collapse: collapse; margin: 4px 0 10px; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; } td.num { text-align: right; }
.record { display: flex; gap: 12px; background: white; border: 1px solid #ddd; border-left: 5px solid #3a3;
          border-radius: 4px; padding: 8px; margin: 8px 0; }
.record.truncated { border-left-color: #d9a400; } .record.error { border-left-color: #c33; }
.frames { flex: 0 0 46%; } .strip { display: block; max-width: 100%; border-radius: 2px; }
.strip.none { width: 200px; height: 64px; background: #eee; color: #888; display: flex; align-items: center;
              justify-content: center; font-size: 12px; }
.note { font-size: 11px; color: #666; margin: 3px 0 0; } .text { flex: 1 1 auto; min-width: 0; }
.head { margin: 0 0 4px; font-size: 13px; } .facts { color: #666; margin-left: 8px; font-size: 12px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; color: white; background: #3a3;
         font-size: 12px; } .truncated .badge { background: #d9a400; } .error .badge { background: #c33; }
.caption { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 14px; }
.caption.none { color: #999; } .error { color: #a00; margin: 0 0 4px; font-size: 13px; }
.histograms svg { margin: 4px; border: 1px solid #ddd; }
"""

# tells a headless browser (and the test) how many thumbnail strips really decoded
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.strip");
  var ok = Array.prototype.filter.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-strips-decoded", ok.length);
});
</script>"""


def page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n{script}</body></html>\n"
    )


def counts_line(summary: dict) -> str:
    return ", ".join(f"{c} {s}" for s, c in summary["status"].items())


def gallery_html(summary: dict, items: list[dict], keys: dict, model: str, sample: int) -> str:
    n, shown = summary["records"], len(items)
    errors = summary["status"].get("error", 0)
    if shown == n:
        scope = f"all {n} records"
    else:
        scope = (
            f"{shown} of {n} records: an evenly spaced sample of {sample} plus "
            f"{'every error' if errors <= GALLERY_MAX_ERRORS else f'the first {GALLERY_MAX_ERRORS} errors'}"
        )
    body = [
        "<h1>Caption gallery</h1>",
        f'<p class="scope">Showing {scope}. {n} records: {counts_line(summary)}. Model: '
        f"<code>{html.escape(model)}</code>.</p>",
    ]
    if is_tiny_model(model):
        body.append(f'<p class="warning">{html.escape(TINY_NOTE)}</p>')
    body += [gallery_card(item, keys) for item in items]
    return page("vidcap caption gallery", "\n".join(body), IMAGE_CHECK)


# ---------------------------------------------------------------------------------------- summary
def caption_throughput(stats_files: list[Path]) -> dict | None:
    """Output tokens per second of generate time, summed over the caption jobs' .stats.json files."""
    tokens = seconds = 0.0
    found = False
    for path in stats_files:
        try:
            stats = read_json(path)
        except (OSError, ValueError):
            continue
        found = True
        tokens += stats.get("output_tokens") or 0
        seconds += stats.get("generate_seconds") or 0
    if not found:
        return None
    return {
        "output_tokens": int(tokens),
        "generate_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
    }


def table(rows: list[list], header: list[str] | None = None, attrs: str = "") -> str:
    out = [f"<table {attrs}>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):  # (value, extra attributes)
                cells.append(f"<td {cell[1]}>{html.escape(str(cell[0]))}</td>")
            elif isinstance(cell, (int, float)):
                cells.append(f'<td class="num">{cell}</td>')
            else:
                cells.append(f"<td>{html.escape(str(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def summary_html(
    summary: dict, settings: dict, steps: dict, throughput: dict | None, histograms: dict[str, str]
) -> str:
    n = summary["records"]
    model = settings.get("model", "?")
    body = ["<h1>vidcap build summary</h1>"]
    if is_tiny_model(model):
        body.append(f'<p class="warning">{html.escape(TINY_NOTE)}</p>')
    body.append(
        f"<p>Output <code>{html.escape(summary['output'])}</code>: <b>{n}</b> records. "
        f"Model <code>{html.escape(model)}</code>.</p>"
    )
    body.append("<h2>Status</h2>")
    body.append(
        table(
            [
                [
                    (s, ""),
                    (c, f'class="num" data-status="{html.escape(s)}"'),
                    f"{100 * c / n:.1f}%" if n else "",
                ]
                for s, c in summary["status"].items()
            ],
            ["status", "records", "share"],
            'id="status"',
        )
    )
    body.append("<h2>Error reasons</h2>")
    if summary["errors"]:
        body.append(
            table(
                [
                    [e["reason"], e["count"], e["example_index"], e["example"] or ""]
                    for e in summary["errors"]
                ],
                ["reason", "records", "example record", "example message"],
                'id="errors"',
            )
        )
    else:
        body.append("<p>No errors.</p>")
    body.append("<h2>Lengths</h2>")
    rows = []
    for name, label in DISTRIBUTIONS.items():
        desc = describe(summary["values"][name])
        if desc:
            rows.append([label] + [desc[k] for k in ("n", "min", "median", "mean", "p95", "max")])
    body.append(table(rows, ["", "n", "min", "median", "mean", "p95", "max"]))
    body.append('<div class="histograms">' + "".join(histograms.values()) + "</div>")
    body.append("<h2>Wall time per step</h2>")
    if steps:
        body.append(
            table(
                [
                    [
                        rule,
                        s["jobs"],
                        s["wall_seconds"],
                        s["longest_job_seconds"],
                        s["cpu_seconds"],
                        s["max_rss_mb"],
                    ]
                    for rule, s in steps.items()
                ],
                ["step", "jobs", "wall s (sum of jobs)", "longest job s", "CPU s", "peak RSS MB"],
                'id="steps"',
            )
        )
    else:
        body.append("<p>No benchmark files found.</p>")
    if throughput:
        body.append(
            f"<p>Captioning: {throughput['output_tokens']} output tokens in "
            f"{throughput['generate_seconds']} s of generate time"
            + (f" ({throughput['tokens_per_second']} tokens/s)." if throughput["tokens_per_second"] else ".")
        )
    body.append("<h2>Settings</h2>")
    rows = [
        ["prompt", settings.get("prompt", "")],
        ["system prompt", settings.get("system_prompt", "")],
        ["shards", settings.get("shards", "")],
    ]
    rows += [[f"frames.{k}", json.dumps(v)] for k, v in (settings.get("frames") or {}).items()]
    rows += [[f"sampling.{k}", json.dumps(v)] for k, v in (settings.get("sampling") or {}).items()]
    rows += [[f"engine.{k}", json.dumps(v)] for k, v in (settings.get("engine") or {}).items()]
    body.append(table(rows, ["setting", "value"], 'id="settings"'))
    return page("vidcap build summary", "\n".join(body))


# ------------------------------------------------------------------------------------------ build
def frames_per_video(manifest_paths: list[str]) -> Counter:
    """Sampled frame count of every video in the manifests (one manifest in memory at a time)."""
    counts: Counter = Counter()
    for path in manifest_paths:
        for entry in read_json(path)["records"]:
            for video in entry.get("videos", []):
                if video and "meta" in video:
                    counts[
                        video["meta"].get("sampled_frames", len(video["meta"].get("frames_indices", [])))
                    ] += 1
    return counts


def build_report(
    input_path: str, output_path: str, files: dict, out: dict, settings: dict, log=sys.stderr
) -> dict:
    """Write summary.html, the histogram SVGs and gallery.html (paths in ``out``); return the summary.

    ``files``: the frames ``manifests`` (in shard order), the caption jobs' ``caption_stats`` files and
    the steps' ``benchmarks`` files.
    """
    started = time.monotonic()
    keys = {**DEFAULT_KEYS, **settings.get("keys", {})}
    summary = summarize_output(output_path, keys, keep_error_indices=GALLERY_MAX_ERRORS)
    print(f"summary of {summary['records']} records: {counts_line(summary)}", file=log, flush=True)
    steps = read_benchmarks(files.get("benchmarks", []))
    throughput = caption_throughput(files.get("caption_stats", []))
    values = dict(summary["values"], frames=frames_per_video(files["manifests"]))
    histograms = {}
    for stem, key in HISTOGRAMS.items():
        svg = svg_histogram(
            values[key],
            HISTOGRAM_TITLES[key],
            HISTOGRAM_XLABELS[key],
            "videos" if key == "frames" else "records",
        )
        histograms[stem] = svg
        with atomic_open(out[stem]) as handle:
            handle.write(svg)
    with atomic_open(out["summary"]) as handle:
        handle.write(summary_html(summary, settings, steps, throughput, histograms))

    sample = int(settings.get("gallery_sample") or GALLERY_SAMPLE)
    selected = gallery_selection(summary["records"], summary["error_indices"], sample)
    items = gallery_items(input_path, output_path, files["manifests"], keys, selected)
    with atomic_open(out["gallery"]) as handle:
        handle.write(gallery_html(summary, items, keys, settings.get("model", "?"), sample))
    print(
        f"gallery: {len(items)} of {summary['records']} records; report files in "
        f"{time.monotonic() - started:.1f} s",
        file=log,
        flush=True,
    )
    print(format_summary(summary, steps, settings.get("model")), file=log, flush=True)
    return summary


# ------------------------------------------------------------------- viewing a built Snakemake report
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def embedded_results(report_text: str) -> dict:
    """The results a ``snakemake --report x.html`` page embeds: {path: {name, mime_type, data_uri, ...}}."""
    match = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', report_text, re.S)
    if not match:
        raise ValueError("not a Snakemake HTML report (no embedded results)")
    return json.loads(match.group(1))


def decode_data_uri(uri: str) -> bytes:
    header, _, data = uri.partition(",")
    return base64.b64decode(data) if header.endswith(";base64") else data.encode("utf-8")


def report_opened_at(report_text: str, result_name: str, category: str) -> str:
    """A copy of the report page that opens one result (e.g. gallery.html) once the app has started."""
    path = next(p for p, r in embedded_results(report_text).items() if r["name"] == result_name)
    script = (
        "<script>(function open() {\n"
        "  if (typeof app === 'undefined' || !app) { return setTimeout(open, 50); }\n"
        f"  app.showCategory({json.dumps(category)});\n"
        f"  app.setView({{content: 'html', contentPath: results[{json.dumps(path)}].data_uri, "
        f"resultPath: {json.dumps(path)}}});\n"
        "})();</script>\n"
    )
    end = report_text.rindex("</body>")
    return report_text[:end] + script + report_text[end:]


def run_chromium(
    url: str, *args: str, size: str = "1400,900", budget_ms: int = 10000, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Headless Debian chromium on ``url`` with a fresh profile; ``args`` e.g. --dump-dom, --screenshot=X."""
    with tempfile.TemporaryDirectory(prefix="vidcap-chromium-") as profile:
        cmd = [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
