"""Which records of a finished build are errors, why, and re-sending only them (``vidcap retry``).

A record whose status is ``error`` keeps that status until its shard is built again. Media that appear,
change or vanish on disk change their shard by themselves (vidcap.shards). For the rest (a file made
readable, a server back up, an engine that refused), ``vidcap retry`` drops the error records' stored
errors from the result store (vidcap.store keeps only errors the inputs decide) and forces their shards'
frames jobs: a frames error is extracted again (the frame cache keeps no errors), and each caption job
then sends only what the store does not hold, which is exactly the error records.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from pathlib import Path

from vidcap.atomic import iter_jsonl, read_json
from vidcap.config import ConfigError, with_defaults
from vidcap.records import record_media
from vidcap.shards import STATE_FILE, shard_ids, shard_of
from vidcap.stats import error_reason, iter_output
from vidcap.store import ResultStore


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


def check_same_build(cfg: dict, output: str | None) -> str:
    """The output file of the build ``cfg`` describes (``output`` if given); raise ConfigError when the
    files show another build's config: shard ids computed with the wrong count would name wrong shards."""
    if output is not None and os.path.realpath(output) != os.path.realpath(cfg["output"]):
        raise ConfigError(
            f"{output} is not this config's output ({cfg['output']}): pass the build's own --configfile "
            "(and --config) so the shard ids are the build's"
        )
    built = _built_shard_count(Path(cfg["results"]) / "shards")
    if built is not None and built != cfg["shards"]:
        raise ConfigError(
            f"the build in {cfg['results']} has {built} shards but this config says {cfg['shards']}: pass "
            "the build's own --configfile (and --config)"
        )
    return output or cfg["output"]


def _built_shard_count(shard_dir: Path) -> int | None:
    try:
        return len(read_json(shard_dir / STATE_FILE)["shards"])
    except (OSError, ValueError, KeyError, TypeError):  # no build there yet, or an older layout
        return None


def retry_targets(shards: list[str], results: str) -> list[str]:
    """Those shards' frame manifests: forcing them reruns their frames, caption and summary jobs (each
    sending only what the result store lacks), then the merge and the report."""
    return [f"{results.rstrip('/')}/frames/{sid}.json" for sid in shards]


def retry_command(shards: list[str], results: str, extra: list[str] | None = None) -> str:
    """The snakemake command ``vidcap retry`` runs, to show (an argument list, quoted for a shell)."""
    return shlex.join(["snakemake", *(extra or []), "--forcerun", *retry_targets(shards, results)])


def clear_stored_errors(results: str, n_shards: int) -> dict:
    """Drop the stored errors of every error record from the result store; return {shard id: error
    records} of the shards that hold any (read from their latest result files, not the output)."""
    root = Path(results.rstrip("/"))
    store = ResultStore(root / "store")
    shards: dict[str, int] = {}
    for sid in shard_ids(n_shards):
        path = root / "summaries" / f"{sid}.jsonl"
        path = path if path.exists() else root / "captions" / f"{sid}.jsonl"
        if not path.exists():
            continue
        for result in iter_jsonl(path):
            if result["caption_meta"]["status"] != "error":
                continue
            shards[sid] = shards.get(sid, 0) + 1
            for key in result.get("keys", []):
                value = store.get(key)
                if value is not None and _is_error(value):
                    store.path(key).unlink(missing_ok=True)
    return shards


def _is_error(value: dict) -> bool:
    meta = value.get("caption_meta", value)  # a caption's or a window's result, or a summary's answer
    return meta.get("status") == "error"


def format_errors(found: dict, results: str, extra: list[str] | None = None) -> str:
    total = sum(found["shards"].values())
    if not total:
        return "no error records"
    lines = [f"{total} error record(s) in {len(found['shards'])} shard(s):"]
    lines += [f"  {count:>6}  {reason}" for reason, count in found["reasons"].items()]
    lines += [
        "",
        "after fixing the cause, re-send only those records (their shards' other records come from the "
        "result store):",
        "  " + shlex.join(["python", "-m", "vidcap", "retry", *(extra or [])]),
    ]
    return "\n".join(lines)
