"""Merging shard results back into one file: every input record once, in input order.

The records are streamed from the shard files in input order (vidcap.shards.iter_sharded_records: the
input as the build's own sync saw it, never an input edited while the build runs); the k-th record of
shard s takes the k-th line of that shard's result file, so memory is bounded by one record per shard.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter

from vidcap.config import with_defaults
from vidcap.records import RecordWriter, record_digest, record_prompt, with_prompt
from vidcap.shards import iter_sharded_records, raise_open_file_limit, shard_ids

# candidates.keep: all writes every candidate; output_format: json the answer's object; caption_set its
# entries (vidcap.caption_set.SET_FIELDS, named here: that module reaches the engine's packages, which
# the merge's env does not have); audio.mode: transcript the speech segments
EXTRA_FIELDS = (
    "captions",
    "caption_json",
    "caption_set",
    "caption_set_json",
    "caption_set_captions",
    "transcript",
)


class StaleResultError(RuntimeError):
    """A shard result does not match the current input (it was built from other records)."""


def merge_captions(
    shard_dir: str, result_files: list[str], output_path: str, settings: dict, log=sys.stderr
) -> Counter:
    """Write ``output_path`` (JSON array or JSONL by suffix); return the count of each status.

    ``shard_dir``: the build's shard files and index; ``result_files``: one caption result file per
    shard, in shard order.
    """
    keys = with_defaults("keys", settings.get("keys"))
    n_shards = int(settings["shards"])
    ids = shard_ids(n_shards)
    if len(result_files) != n_shards:
        raise ValueError(f"{len(result_files)} result files for {n_shards} shards")
    style = settings.get("output_style", "caption")
    counts: Counter = Counter()
    if raise_open_file_limit(n_shards) < n_shards:
        raise OSError(f"cannot open {n_shards} shard results at once: raise the open-file limit (ulimit -n)")
    with contextlib.ExitStack() as stack:
        results = [stack.enter_context(open(path, encoding="utf-8")) for path in result_files]
        writer = stack.enter_context(RecordWriter(output_path))
        # the k-th record of shard s is line k of its result: read in step, positions need not be kept
        for index, record, shard, _ in iter_sharded_records(shard_dir, n_shards):
            line = results[shard].readline()
            if not line:
                raise StaleResultError(
                    f"shard {ids[shard]} has fewer results than input records (record {index})"
                )
            result = json.loads(line)
            if result["digest"] != record_digest(record):
                raise StaleResultError(
                    f"record {index}: the result in shard {ids[shard]} belongs to another record"
                )
            out = with_prompt(record, keys, record_prompt(record, keys, settings["prompt"]))
            out[keys["caption"]] = result["caption"]
            for extra in EXTRA_FIELDS:  # written only by the settings that make them
                if extra in result:
                    out[extra] = result[extra]
            out["caption_meta"] = result["caption_meta"]
            if style == "assistant_turn" and result["caption"] is not None:
                out[keys["conversation"]] = out[keys["conversation"]] + [
                    {"from": "gpt", "value": result["caption"]}
                ]
            writer.write(out)
            counts[result["caption_meta"]["status"]] += 1
        for sid, handle in zip(ids, results):
            if handle.readline():
                raise StaleResultError(f"shard {sid} has more results than input records")
    total = sum(counts.values())
    print(
        f"merged {total} records into {output_path}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        file=log,
        flush=True,
    )
    return counts
