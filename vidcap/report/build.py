"""``build_report``: read the build's outputs once, write the report files (pages, charts, gallery).

Snakemake's ``--report report.html`` embeds each single-file output as a data: URI, so every file
written here is self-contained: images are inline (SVG markup, JPEG data: URIs), no external links.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

from vidcap.atomic import atomic_open, read_json
from vidcap.audit import audit_output
from vidcap.config import defaults, with_defaults
from vidcap.report.charts import svg_histogram
from vidcap.report.gallery import GALLERY_MAX_ERRORS, gallery_card, gallery_items, gallery_selection
from vidcap.report.pages import counts_line, gallery_html, summary_html
from vidcap.stats import DISTRIBUTIONS, format_summary, read_benchmarks, summarize_output

HISTOGRAMS = {  # output name -> (summary value key, title, what a bar counts)
    "hist_frames": ("frames", "Sampled frames per video", "videos"),
    "hist_prompt_tokens": ("prompt_tokens", "Prompt tokens per record", "records"),
    "hist_output_tokens": ("output_tokens", "Output tokens per caption", "records"),
    "hist_caption_words": ("caption_words", "Caption length (words)", "records"),
}
HISTOGRAM_XLABELS = dict(DISTRIBUTIONS, frames="sampled frames per video")


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


def frames_per_video(manifest_paths: list[str]) -> Counter:
    """Sampled frame count of every video in the manifests (one manifest in memory at a time)."""
    counts: Counter = Counter()
    for path in manifest_paths:
        for entry in read_json(path)["records"]:
            for video in entry.get("videos", []):
                if video and "meta" in video:
                    meta = video["meta"]
                    counts[meta.get("sampled_frames", len(meta.get("frames_indices", [])))] += 1
    return counts


def write_text(path: str, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_histograms(values: dict[str, Counter], out: dict) -> dict[str, str]:
    """Write each histogram SVG to ``out[name]``; return them by name (the summary page inlines them)."""
    histograms = {}
    for name, (key, title, ylabel) in HISTOGRAMS.items():
        histograms[name] = svg_histogram(values[key], title, HISTOGRAM_XLABELS[key], ylabel, name=name)
        write_text(out[name], histograms[name])
    return histograms


def report_disk(shard_dir: str, settings: dict) -> dict:
    """The frame cache's and result store's sizes (the results folder holds the shard folder)."""
    from vidcap.prune import cache_sizes

    codec = with_defaults("frames", (settings.get("frames") or {})).get("cache_codec")
    return {**cache_sizes(os.path.dirname(os.path.abspath(shard_dir))), "codec": codec}


def build_report(
    shard_dir: str, output_path: str, files: dict, out: dict, settings: dict, log=sys.stderr
) -> dict:
    """Write summary.html, the histogram SVGs and gallery.html (paths in ``out``); return the summary.

    ``shard_dir``: the build's shard files (its records, in input order with their index).
    ``files``: the frames ``manifests`` (in shard order), the caption jobs' ``caption_stats`` files and
    the steps' ``benchmarks`` files.
    """
    started = time.monotonic()
    keys = with_defaults("keys", settings.get("keys"))
    model = settings.get("model", "?")
    summary = summarize_output(output_path, keys, keep_error_indices=GALLERY_MAX_ERRORS)
    print(f"summary of {summary['records']} records: {counts_line(summary)}", file=log, flush=True)
    steps = read_benchmarks(files.get("benchmarks", []))
    throughput = caption_throughput(files.get("caption_stats", []))
    histograms = write_histograms(dict(summary["values"], frames=frames_per_video(files["manifests"])), out)
    audit = audit_output(output_path, settings.get("audit"), keys["caption"])
    disk = report_disk(shard_dir, settings)
    write_text(out["summary"], summary_html(summary, settings, steps, throughput, histograms, audit, disk))

    sample = int(settings.get("gallery_sample") or defaults()["gallery_sample"])
    selected = gallery_selection(summary["records"], summary["error_indices"], sample)
    items = gallery_items(shard_dir, output_path, files["manifests"], keys, selected)
    cards = [gallery_card(item, keys) for item in items]
    write_text(out["gallery"], gallery_html(summary, cards, model, sample, GALLERY_MAX_ERRORS))
    print(
        f"gallery: {len(items)} of {summary['records']} records; report files in "
        f"{time.monotonic() - started:.1f} s",
        file=log,
        flush=True,
    )
    print(format_summary(summary, steps, settings.get("model")), file=log, flush=True)
    return summary
