"""Run statistics: what a finished build's output file says (status counts, error reasons, lengths),
plus job wall times from Snakemake's benchmark files.

Everything streams: counts are kept as ``Counter``s of values, so memory is bounded by the number of
distinct values, not by the number of records. ``python -m vidcap stats OUTPUT`` prints this summary.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

# the output is ours: read without the input checks
from vidcap.records import (
    DEFAULT_KEYS,
    InputError,
    _iter_json_array,
    _iter_jsonl,
    is_jsonl,
    record_media,
)

STATUSES = ("ok", "truncated", "degenerate", "error")
DISTRIBUTIONS = {  # summary key -> what it counts
    "frames": "sampled frames per record",
    "prompt_tokens": "prompt tokens per record (text + vision)",
    "output_tokens": "output tokens per caption",
    "caption_words": "caption length in words",
}
DESCRIBE_COLUMNS = ["n", "min", "median", "mean", "p95", "max"]
BENCHMARK_COLUMNS = ["jobs", "wall_seconds", "longest_job_seconds", "cpu_seconds", "max_rss_mb"]
TINY_MODEL_MARKER = "VIDCAP_TINY_MODEL.txt"


def iter_output(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(index, record) for every record of a vidcap output file (.jsonl or JSON array), streaming."""
    path = Path(path)
    for index, record in _iter_jsonl(path) if is_jsonl(path) else _iter_json_array(path):
        if not isinstance(record, dict):  # not a vidcap output: say so, not an AttributeError later
            kind = type(record).__name__
            raise InputError(f"{path}: record {index} is a {kind}, not an object: not a vidcap output file")
        yield index, record


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
            reason = error_reason(
                meta.get("error") or "no reason given", record_media(record, {**DEFAULT_KEYS, **(keys or {})})
            )
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
    """n / min / median / mean / p95 / max of a Counter of numbers (None when empty).

    Quantiles are the lower nearest rank, so they are values that occur (a median of 4 frames, not 4.5).
    """
    if not sum(counts.values()):
        return None
    weights = pd.Series(counts, dtype="int64").sort_index()
    values = weights.index.tolist()  # plain Python numbers
    total = int(weights.sum())
    below = weights.cumsum().to_numpy()

    def quantile(q: float):
        return values[int((below > q * (total - 1)).argmax())]

    return {
        "n": total,
        "min": values[0],
        "median": quantile(0.5),
        "mean": round(float((weights.index.to_numpy() * weights.to_numpy()).sum() / total), 1),
        "p95": quantile(0.95),
        "max": values[-1],
    }


def describe_table(values: dict[str, Counter]) -> pd.DataFrame:
    """One ``describe`` row per non-empty distribution, indexed by its name (in ``values`` order)."""
    rows = {name: desc for name, counts in values.items() if (desc := describe(counts))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=DESCRIBE_COLUMNS)


# ------------------------------------------------------------------------------------ benchmarks
def benchmark_files(bench_dir: str | os.PathLike) -> list[Path]:
    """Every ``bench_dir/<rule>/<job>.tsv`` (Snakemake ``benchmark:`` files) of a results folder."""
    root = Path(bench_dir)
    return sorted(root.glob("*/*.tsv")) if root.is_dir() else []


def benchmark_table(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Wall time per step from Snakemake benchmark files, grouped by their folder (the rule's name).

    Missing files are skipped (a job that has not run yet, or a cleaned-up results folder).
    Per step (the index, sorted): jobs, total and longest job wall seconds, CPU seconds, peak RSS (MB).
    """
    jobs = []
    for path in sorted(map(Path, paths)):
        if path.is_file():
            runs = pd.read_csv(path, sep="\t")
            if len(runs):
                jobs.append(runs.iloc[[-1]].assign(step=path.parent.name))  # with `repeat(...)`: the last run
    if not jobs:
        return pd.DataFrame(columns=BENCHMARK_COLUMNS, index=pd.Index([], name="step"))
    runs = pd.concat(jobs, ignore_index=True)
    # Snakemake writes NA when it could not measure: counted as 0, like a missing column
    table = runs.reindex(columns=["s", "cpu_time", "max_rss"]).apply(pd.to_numeric, errors="coerce")
    table = table.astype(float).fillna(0.0)
    table["step"] = runs["step"]
    steps = table.groupby("step").agg(
        jobs=("s", "size"),
        wall_seconds=("s", "sum"),
        longest_job_seconds=("s", "max"),
        cpu_seconds=("cpu_time", "sum"),
        max_rss_mb=("max_rss", "max"),
    )
    return steps.round(1)


def read_benchmarks(paths: list[str | os.PathLike]) -> dict[str, dict]:
    """``benchmark_table`` as {step: {jobs, wall_seconds, ...}} (plain Python numbers)."""
    return benchmark_table(paths).to_dict("index")


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
    for name, row in describe_table(summary["values"]).to_dict("index").items():
        lines.append(
            f"  {name:<16} {row['n']:>8} "
            + " ".join(f"{row[k]:>8}" for k in DESCRIBE_COLUMNS[1:])
            + f"   {DISTRIBUTIONS[name]}"
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
