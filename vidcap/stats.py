"""Run statistics: what a finished build's output file says (status counts, error reasons, lengths),
plus job wall times from Snakemake's benchmark files.

Everything streams: counts are kept as ``Counter``s of values, so memory is bounded by the number of
distinct values, not by the number of records. ``python -m vidcap stats OUTPUT`` prints this summary.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

# the output is ours: read without the input checks
from vidcap.records import DEFAULT_KEYS, _iter_json_array, _iter_jsonl, is_jsonl, record_media

STATUSES = ("ok", "truncated", "error")
DISTRIBUTIONS = {  # summary key -> what it counts
    "frames": "sampled frames per record",
    "prompt_tokens": "prompt tokens per record (text + vision)",
    "output_tokens": "output tokens per caption",
    "caption_words": "caption length in words",
}
TINY_MODEL_MARKER = "VIDCAP_TINY_MODEL.txt"


def iter_output(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(index, record) for every record of a vidcap output file (.jsonl or JSON array), streaming."""
    path = Path(path)
    return _iter_jsonl(path) if is_jsonl(path) else _iter_json_array(path)


def error_reason(message: str, media: list[str] = ()) -> str:
    """An error message reduced to its kind, so identical failures group together.

    "clip 17.mp4: missing file" -> "missing file"; "too long: 9000 vision tokens exceed max_model_len
    4096" -> "too long: N vision tokens exceed max_model_len N"; details in brackets are dropped.
    """
    reason = message.strip()
    for path in media:
        for name in (os.path.basename(path), path):
            if name and reason.startswith(name + ": "):
                reason = reason[len(name) + 2 :]
        reason = reason.replace(path, "<file>")
    reason = reason.split(" (", 1)[0]
    reason = re.sub(r"\d+(\.\d+)?", "N", reason)
    return reason[:120] or "unknown"


def summarize_output(path: str | os.PathLike, keys: dict | None = None, keep_error_indices: int = 0) -> dict:
    """Counts and value distributions of one output file (and the first error records' indices)."""
    caption_key = (keys or {}).get("caption", "caption")
    status: Counter = Counter()
    finish: Counter = Counter()
    reasons: dict[str, dict] = {}
    error_indices: list[int] = []
    values = {name: Counter() for name in DISTRIBUTIONS}
    n = 0
    for index, record in iter_output(path):
        n += 1
        meta = record.get("caption_meta") or {}
        state = meta.get("status", "missing caption_meta")
        status[state] += 1
        if meta.get("finish_reason"):
            finish[meta["finish_reason"]] += 1
        if state == "error":
            if len(error_indices) < keep_error_indices:
                error_indices.append(index)
            reason = error_reason(meta.get("error") or "no reason given", record_media(record, {**DEFAULT_KEYS, **(keys or {})}))
            entry = reasons.setdefault(
                reason, {"reason": reason, "count": 0, "example_index": index, "example": meta.get("error")}
            )
            entry["count"] += 1
        for name in ("frames", "prompt_tokens", "output_tokens"):
            if isinstance(meta.get(name), int) and (
                state != "error" or (name == "frames" and meta[name] > 0)
            ):
                values[name][meta[name]] += 1
        caption = record.get(caption_key)
        if isinstance(caption, str):
            values["caption_words"][len(caption.split())] += 1
    return {
        "output": str(path),
        "records": n,
        "status": {s: status.get(s, 0) for s in STATUSES}
        | {s: c for s, c in status.items() if s not in STATUSES},
        "finish_reasons": dict(finish),
        "errors": sorted(reasons.values(), key=lambda e: (-e["count"], e["reason"])),
        "values": values,
        "error_indices": error_indices,
    }


def describe(counts: Counter) -> dict | None:
    """min / median / mean / p95 / max of a Counter of numbers (None when empty)."""
    total = sum(counts.values())
    if not total:
        return None
    ordered = sorted(counts.items())

    def quantile(q: float) -> float:
        rank, seen = q * (total - 1), 0
        for value, count in ordered:
            seen += count
            if seen > rank:
                return value
        return ordered[-1][0]

    mean = sum(v * c for v, c in ordered) / total
    return {
        "n": total,
        "min": ordered[0][0],
        "median": quantile(0.5),
        "mean": round(mean, 1),
        "p95": quantile(0.95),
        "max": ordered[-1][0],
    }


# ------------------------------------------------------------------------------------ benchmarks
def benchmark_files(bench_dir: str | os.PathLike) -> list[Path]:
    """Every ``bench_dir/<rule>/<job>.tsv`` (Snakemake ``benchmark:`` files) of a results folder."""
    root = Path(bench_dir)
    return sorted(root.glob("*/*.tsv")) if root.is_dir() else []


def read_benchmarks(paths: list[str | os.PathLike]) -> dict[str, dict]:
    """Wall time per step from Snakemake benchmark files, grouped by their folder (the rule's name).

    Missing files are skipped (a job that has not run yet, or a cleaned-up results folder).
    Per step: jobs, total and longest job wall seconds, CPU seconds, peak RSS (MB).
    """
    jobs_by_step: dict[str, list[dict]] = {}
    for path in sorted(map(Path, paths)):
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            jobs_by_step.setdefault(path.parent.name, []).append(rows[-1])  # with `repeat(...)`: the last run
    steps = {}
    for step, jobs in sorted(jobs_by_step.items()):
        wall = [_number(j.get("s")) for j in jobs]
        steps[step] = {
            "jobs": len(jobs),
            "wall_seconds": round(sum(wall), 1),
            "longest_job_seconds": round(max(wall), 1),
            "cpu_seconds": round(sum(_number(j.get("cpu_time")) for j in jobs), 1),
            "max_rss_mb": round(max(_number(j.get("max_rss")) for j in jobs), 1),
        }
    return steps


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # Snakemake writes "NA" when it could not measure
        return 0.0


def is_tiny_model(model: str) -> bool:
    return os.path.isfile(os.path.join(model, TINY_MODEL_MARKER))


# --------------------------------------------------------------------------------------- printing
def format_summary(summary: dict, steps: dict | None = None, model: str | None = None) -> str:
    """The summary as plain text for a terminal."""
    n = summary["records"]
    lines = [f"{summary['output']}: {n} records"]
    if model:
        lines.append(f"model: {model}")
        if is_tiny_model(model):
            lines.append("  NOTE: random-weight tiny test model; its captions are gibberish by design")
    for state, count in summary["status"].items():
        lines.append(f"  {state:<10} {count:>8}  {_percent(count, n)}")
    if summary["errors"]:
        lines.append("error reasons:")
        for err in summary["errors"]:
            lines.append(f"  {err['count']:>8}  {err['reason']}  (e.g. record {err['example_index']})")
    lines.append("distributions:           n      min   median     mean      p95      max")
    for name, label in DISTRIBUTIONS.items():
        desc = describe(summary["values"][name])
        if desc:
            lines.append(
                f"  {name:<16} {desc['n']:>8} "
                + " ".join(f"{desc[k]:>8}" for k in ("min", "median", "mean", "p95", "max"))
                + f"   {label}"
            )
    if steps:
        lines.append("wall time per step (from benchmark files):")
        for rule, step in steps.items():
            lines.append(
                f"  {rule:<16} {step['jobs']:>5} jobs  {step['wall_seconds']:>9.1f} s total  "
                f"longest {step['longest_job_seconds']:.1f} s  peak RSS {step['max_rss_mb']:.0f} MB"
            )
    return "\n".join(lines)


def _percent(count: int, total: int) -> str:
    return f"{100 * count / total:5.1f}%" if total else ""
