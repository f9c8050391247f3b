"""Deterministic sharding of the input records into shard files.

A record's shard depends only on its media (video and image paths), never on its position, so
editing, adding or removing one record changes exactly one shard file. Shard files are rewritten
only when their content changes: unchanged shards keep their mtime, so Snakemake rebuilds nothing
downstream of them. Two streaming passes keep memory bounded by the number of shards, not records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import sys
from pathlib import Path

from vidcap.atomic import atomic_open, dumps_line, read_json, write_json
from vidcap.config import with_defaults
from vidcap.records import iter_records, record_media

STATE_FILE = ".state.json"
MAX_OPEN_SHARDS = 4000  # file handles held at once while (re)writing shards; more shards take more passes


def shard_ids(n_shards: int) -> list[str]:
    width = max(4, len(str(n_shards - 1)))
    return [f"{i:0{width}d}" for i in range(n_shards)]


def shard_of(record: dict, keys: dict, n_shards: int) -> int:
    media = record_media(record, keys)
    if media:
        identity = json.dumps(media, ensure_ascii=False)
    else:  # no media at all: the record's content is all there is to go by
        identity = json.dumps(record, sort_keys=True, ensure_ascii=False)
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft limit on open files towards ``needed`` (+ slack); return how many may be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 64:
        target = needed + 64 if hard == resource.RLIM_INFINITY else min(hard, needed + 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
        soft = max(soft, target)
    return needed if soft == resource.RLIM_INFINITY else max(1, soft - 64)


def input_fingerprint(input_path, n_shards: int, keys: dict) -> list:
    st = os.stat(input_path)
    return [os.path.abspath(input_path), st.st_size, st.st_mtime_ns, n_shards, keys["video"], keys["image"]]


def shard_file(shard_dir: str | os.PathLike, shard_id: str) -> Path:
    return Path(shard_dir) / f"{shard_id}.jsonl"


def _shards_untouched(shard_dir: Path, ids: list[str], known: dict) -> bool:
    """True if every shard file still has the size and mtime recorded when it was last checked."""
    for sid in ids:
        entry = known.get(sid)
        try:
            st = shard_file(shard_dir, sid).stat()
        except FileNotFoundError:
            return False
        if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return False
    return True


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def sync_shards(input_path: str | os.PathLike, shard_dir: str | os.PathLike, n_shards: int,
                keys: dict | None = None, log=sys.stderr) -> dict:
    """Validate the input and bring ``shard_dir/<id>.jsonl`` up to date; return a summary.

    Raises :class:`vidcap.records.InputError` on a malformed input, before writing anything.
    """
    keys = with_defaults("keys", keys)
    shard_dir = Path(shard_dir)
    ids = shard_ids(n_shards)
    state_path = shard_dir / STATE_FILE
    try:
        state = read_json(state_path)
    except (FileNotFoundError, ValueError):
        state = {}
    fingerprint = input_fingerprint(input_path, n_shards, keys)
    known = state.get("shards", {})
    if state.get("input") == fingerprint and _shards_untouched(shard_dir, ids, known):
        # same input file (path, size, mtime) and shard files as last time: it was valid then, nothing to do
        total = sum(known[sid]["records"] for sid in ids)
        if log is not None:
            print(f"vidcap: {total} records in {n_shards} shards; input unchanged", file=log)
        return {"records": total, "shards": n_shards, "changed": []}

    # pass 1: validate everything and hash each shard's would-be content
    hashers = [hashlib.sha256() for _ in ids]
    counts = [0] * n_shards
    total = 0
    for _, record in iter_records(input_path, keys):
        shard = shard_of(record, keys, n_shards)
        hashers[shard].update(dumps_line(record).encode("utf-8"))
        counts[shard] += 1
        total += 1
    wanted = {sid: h.hexdigest() for sid, h in zip(ids, hashers)}

    changed = []
    for sid in ids:
        path = shard_file(shard_dir, sid)
        current = known[sid]["sha256"] if _shards_untouched(shard_dir, [sid], known) else _file_sha256(path)
        if current != wanted[sid]:
            changed.append(sid)

    # pass 2: rewrite only the shards whose content changed, a bounded batch of handles at a time
    per_pass = min(MAX_OPEN_SHARDS, raise_open_file_limit(min(len(changed), MAX_OPEN_SHARDS)))
    for start in range(0, len(changed), per_pass):
        batch = {int(sid): sid for sid in changed[start:start + per_pass]}
        with contextlib.ExitStack() as stack:
            handles = {i: stack.enter_context(atomic_open(shard_file(shard_dir, sid))) for i, sid in batch.items()}
            for _, record in iter_records(input_path, keys):
                shard = shard_of(record, keys, n_shards)
                if shard in handles:
                    handles[shard].write(dumps_line(record))

    # shards beyond the configured count belong to an older layout
    for stale in shard_dir.glob("*.jsonl"):
        if stale.stem not in wanted:
            stale.unlink()

    new_state = {}
    for sid in ids:
        st = shard_file(shard_dir, sid).stat()
        new_state[sid] = {"sha256": wanted[sid], "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "records": counts[int(sid)]}
    write_json(state_path, {"input": fingerprint, "shards": new_state}, indent=None)
    summary = {"records": total, "shards": n_shards, "changed": changed}
    if log is not None:
        which = "" if len(changed) > 8 else f" ({', '.join(changed)})" if changed else ""
        print(f"vidcap: {total} records in {n_shards} shards; {len(changed)} shard file(s) updated{which}",
              file=log)
    return summary
