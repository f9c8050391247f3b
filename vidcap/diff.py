"""Which captions changed between two builds of the same input, and why (``python -m vidcap diff OLD NEW``).

Records are matched by position (the output keeps the input's order) and checked by their media paths.
A record's reasons come from what differs in the record itself (prompt turn, ``caption_meta`` frames and
seed) and from what differs between the two runs' provenance files beside the outputs (model
and weights, sampling, frame settings, engine, software), which applies to every changed record.
Both files are streamed side by side: memory is one record pair plus the changes listed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

from vidcap.atomic import read_json
from vidcap.provenance import find_provenance
from vidcap.records import DEFAULT_KEYS, record_media
from vidcap.stats import iter_output

# provenance fields -> the reason they name
RUN_FIELDS = {
    "model": "model",
    "revision": "model",
    "weights_hash": "model",
    "sampling": "sampling",
    "frames": "frames",
    "engine": "engine",
    "quality": "quality",
    "prompts": "prompt",
    "versions": "software",
    "variants": "provenance",
}
# caption_meta fields that are inputs to the caption (not results of it) -> the reason they name
META_CAUSES = {
    "frames": "frames",
    "halved": "frames",
    "seed": "sampling",
    "prompt_tokens": "prompt tokens",
    "attempts": "quality",
}
EXCERPT = 120


def output_provenance(output: str | Path) -> dict | None:
    """The provenance file beside an output file (vidcap.provenance.find_provenance), or None."""
    path = find_provenance(output)
    return read_json(path) if path is not None else None


def run_differences(old: dict | None, new: dict | None) -> dict[str, list]:
    """What differs between two runs' provenance: ``{field: [old, new]}`` (``provenance`` if one is missing)."""
    if old is None or new is None:
        return (
            {"provenance": ["present" if old else "missing", "present" if new else "missing"]}
            if old or new
            else {}
        )
    changed = {key: [old.get(key), new.get(key)] for key in RUN_FIELDS if old.get(key) != new.get(key)}
    if not changed and old.get("config_hash") != new.get("config_hash"):
        changed["config_hash"] = [old.get("config_hash"), new.get("config_hash")]
    return changed


def run_reasons(run: dict) -> list[str]:
    """The reasons run-level differences name (model, sampling, frames, engine, software, config)."""
    return sorted({RUN_FIELDS.get(key, "config") for key in run})


def _prompt(record: dict, keys: dict) -> str | None:
    for turn in record.get(keys["conversation"]) or []:
        if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
            return turn.get("value")
    return None


def _excerpt(text) -> str | None:
    if not isinstance(text, str):
        return text
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


def record_reasons(old: dict, new: dict, keys: dict, run_reasons: list[str]) -> list[str]:
    """Why the caption of one record pair may differ; ``unexplained`` when nothing recorded differs."""
    reasons = []
    if record_media(old, keys) != record_media(new, keys):
        reasons.append("media: paths differ (not the same input record?)")
    if _prompt(old, keys) != _prompt(new, keys):
        reasons.append("prompt")
    old_meta, new_meta = old.get("caption_meta") or {}, new.get("caption_meta") or {}
    for key, reason in META_CAUSES.items():
        if old_meta.get(key) != new_meta.get(key):
            reasons.append(f"{reason}: {key} {old_meta.get(key)} -> {new_meta.get(key)}")
    reasons.extend(run_reasons)
    if old_meta.get("status") != new_meta.get("status"):
        reasons.append(f"status {old_meta.get('status')} -> {new_meta.get('status')}")
    return reasons or ["unexplained: same prompt, frames, seed and run settings (media content changed?)"]


def iter_changes(old_path, new_path, keys: dict | None = None, run_reasons: list[str] = ()) -> Iterator[dict]:
    """Every record pair whose caption (or ``captions``) or media paths differ, with its reasons."""
    keys = {**DEFAULT_KEYS, **(keys or {})}
    ck = keys["caption"]
    counts = [0, 0]
    for pair in zip_longest(iter_output(old_path), iter_output(new_path)):
        counts[0] += pair[0] is not None
        counts[1] += pair[1] is not None
        if None in pair:
            continue  # one file is longer: counted, then refused below
        (index, old), (_, new) = pair
        same_media = record_media(old, keys) == record_media(new, keys)
        if same_media and old.get(ck) == new.get(ck) and old.get("captions") == new.get("captions"):
            continue
        yield {
            "index": index,
            "reasons": record_reasons(old, new, keys, list(run_reasons)),
            "old": _excerpt(old.get(ck)),
            "new": _excerpt(new.get(ck)),
        }
    if counts[0] != counts[1]:
        raise ValueError(
            f"{old_path} has {counts[0]} records, {new_path} has {counts[1]}: "
            "diff compares builds of the same input, record by record"
        )


def diff_outputs(old_path, new_path, keys: dict | None = None, limit: int | None = None) -> dict:
    """The diff as a dict: run-level differences, changed-record counts by reason, the first ``limit`` changes."""
    run = run_differences(output_provenance(old_path), output_provenance(new_path))
    by_reason: Counter = Counter()
    changes, count = [], 0
    for change in iter_changes(old_path, new_path, keys, run_reasons(run)):
        count += 1
        by_reason.update(reason.split(":")[0] for reason in change["reasons"])
        if limit is None or len(changes) < limit:
            changes.append(change)
    return {
        "old": str(old_path),
        "new": str(new_path),
        "run_differences": run,
        "changed": count,
        "by_reason": dict(by_reason.most_common()),
        "changes": changes,
    }


def format_change(change: dict) -> str:
    return (
        f"record {change['index']}: {'; '.join(change['reasons'])}\n"
        f"  - {change['old']!r}\n  + {change['new']!r}"
    )


def format_run_differences(run: dict) -> str:
    if not run:
        return "runs: same model, sampling, frames, engine, prompts and software (provenance files)"
    lines = ["runs differ (provenance files):"]
    for key, (old, new) in run.items():
        lines.append(f"  {key}: {_excerpt(str(old))} -> {_excerpt(str(new))}")
    return "\n".join(lines)
