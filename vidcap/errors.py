"""Which records of a finished build are errors, why, and the command that re-captions only them.

A record whose status is ``error`` keeps that status until its shard's caption job runs again: after
fixing the cause (a file restored, more context, a server back up), force exactly those shards'
caption jobs; Snakemake then re-merges the output. Media that appear, change or vanish on disk change
their shard by themselves (vidcap.shards), so they need no forcing.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter

from vidcap.config import with_defaults
from vidcap.records import record_media
from vidcap.shards import shard_ids, shard_of
from vidcap.stats import error_reason, iter_output


def error_shards(output_path: str | os.PathLike, n_shards: int, keys: dict | None = None) -> dict:
    """{shard id: number of error records} and {reason: count} of a build's output file."""
    keys = with_defaults("keys", keys)
    ids = shard_ids(n_shards)
    shards: Counter = Counter()
    reasons: Counter = Counter()
    for _, record in iter_output(output_path):
        meta = record.get("caption_meta") or {}
        if meta.get("status") != "error":
            continue
        shards[ids[shard_of(record, keys, n_shards)]] += 1
        reasons[error_reason(meta.get("error") or "no reason given", record_media(record, keys))] += 1
    return {"shards": dict(sorted(shards.items())), "reasons": dict(reasons.most_common())}


def retry_command(shards: list[str], results: str, extra: list[str] | None = None) -> str:
    """``snakemake --forcerun <those shards' caption results>``: reruns them, the merge and the report."""
    targets = [f"{results.rstrip('/')}/captions/{sid}.jsonl" for sid in shards]
    return shlex.join(["snakemake", *(extra or []), "--forcerun", *targets])


def format_errors(found: dict, results: str, extra: list[str] | None = None) -> str:
    total = sum(found["shards"].values())
    if not total:
        return "no error records"
    lines = [f"{total} error record(s) in {len(found['shards'])} shard(s):"]
    lines += [f"  {count:>6}  {reason}" for reason, count in found["reasons"].items()]
    lines += [
        "",
        "after fixing the cause, re-caption only those shards:",
        "  " + retry_command(list(found["shards"]), results, extra),
    ]
    return "\n".join(lines)
