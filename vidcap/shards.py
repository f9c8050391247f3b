"""Deterministic sharding of the input records into shard files.

A record's shard depends only on its media (video and image paths), never on its position, so
editing, adding or removing one record changes exactly one shard file. Each shard line also carries
a stamp of the record's media files (size and mtime, null when missing) under ``records.MEDIA_STAMP``,
so replacing, adding or deleting a media file changes that one shard file too. Shard files are
rewritten only when their content changes: unchanged shards keep their mtime, so Snakemake rebuilds
nothing downstream of them.

One streaming pass over the input validates it, hashes each shard's would-be content and spools
the lines to one temp file; only the shards whose content changed are then copied out of the spool
(no second parse): memory is bounded by the number of shards, not records. When the input file is unchanged, the media paths listed in an index beside the shards
are stat'ed again and the input is not read at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import struct
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from vidcap.atomic import FILE_MODE, atomic_open, read_json, write_json
from vidcap.config import with_defaults
from vidcap.records import MEDIA_STAMP, InputError, iter_records, loads_line, record_media, resolve_media

FORMAT = 3  # layout of shard lines and state; a new value makes the next parse rewrite what differs
STATE_FILE = ".state.json"
# one line per record, input order: [stamp, resolved media paths, shard]. The merge and the report walk
# it, with the shard files, instead of the input: a build never reads an input edited while it runs
INDEX_FILE = ".media-index"
FSYNC_THREADS = 8
MAX_OPEN_SHARDS = 4000  # file handles held at once while (re)writing shards; more shards take more passes
_FRAME = struct.Struct("<II")  # spool file: shard number and length of the line that follows


def shard_ids(n_shards: int) -> list[str]:
    width = max(4, len(str(n_shards - 1)))
    return [f"{i:0{width}d}" for i in range(n_shards)]


def shard_of(record: dict, keys: dict, n_shards: int) -> int:
    return _shard_index(record_media(record, keys), record, n_shards)


def _shard_index(media: list[str], record: dict, n_shards: int) -> int:
    if media:  # NUL cannot occur in a path
        identity = "\0".join(media)
    else:  # no media at all: the record's content is all there is to go by
        identity = json.dumps(record, sort_keys=True, ensure_ascii=False)
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def iter_shard_positions(input_path, keys: dict, n_shards: int):
    """(index, record, shard, position) for every input record, in input order: the record is line
    ``position`` of shard ``shard``'s files (the join merge and report walk; memory: one record)."""
    positions = [0] * n_shards
    for index, record in iter_records(input_path, keys):
        shard = shard_of(record, keys, n_shards)
        yield index, record, shard, positions[shard]
        positions[shard] += 1


def index_file(shard_dir: str | os.PathLike) -> Path:
    return Path(shard_dir) / INDEX_FILE


def iter_sharded_records(shard_dir: str | os.PathLike, n_shards: int):
    """(index, record, shard, position) for every record, in input order, as the last sync of
    ``shard_dir`` saw the input: read from the shard files in the index's order (memory: one line per
    shard), so the merge of a running build never reads an input edited under it."""
    ids = shard_ids(n_shards)
    if raise_open_file_limit(n_shards + 1) < n_shards + 1:
        raise OSError(f"cannot open {n_shards} shard files at once: raise the open-file limit (ulimit -n)")
    positions = [0] * n_shards
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(shard_file(shard_dir, sid), "rb")) for sid in ids]
        index = stack.enter_context(open(index_file(shard_dir), "rb"))
        for i, line in enumerate(index):
            shard = orjson.loads(line)[2]
            record = loads_line(files[shard].readline())
            record.pop(MEDIA_STAMP, None)
            yield i, record, shard, positions[shard]
            positions[shard] += 1


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft limit on open files towards ``needed`` (+ slack); return how many may be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 64:
        target = needed + 64 if hard == resource.RLIM_INFINITY else min(hard, needed + 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
        soft = max(soft, target)
    return needed if soft == resource.RLIM_INFINITY else max(1, soft - 64)


def input_fingerprint(input_path, n_shards: int, keys: dict, media_root: str) -> list:
    st = os.stat(input_path)
    return [
        FORMAT,
        os.path.abspath(input_path),
        st.st_size,
        st.st_mtime_ns,
        n_shards,
        keys["video"],
        keys["image"],
        os.path.abspath(media_root),
    ]


def media_stamp(paths: list[str]) -> list:
    """``[size, mtime_ns]`` of each file, ``None`` for one that cannot be stat'ed (missing, no access)."""
    stamp = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            stamp.append(None)
        else:
            stamp.append([st.st_size, st.st_mtime_ns])
    return stamp


def dumps_line(obj) -> bytes:
    """One JSONL line as UTF-8 bytes: orjson, or the stdlib for what orjson refuses (huge integers)."""
    try:
        return orjson.dumps(obj) + b"\n"
    except TypeError:
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "surrogatepass"
        )


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


def _media_unchanged(shard_dir: Path, entry: dict | None) -> bool:
    """True if every media file in the index still has the stamp recorded for it (input not read)."""
    index = shard_dir / INDEX_FILE
    try:
        st = index.stat()
    except FileNotFoundError:
        return False
    if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
        return False
    with open(index, "rb") as handle:
        for line in handle:
            stamp, paths, _ = orjson.loads(line)
            if media_stamp(paths) != stamp:
                return False
    return True


class _ShardFiles:
    """Fresh temp files for some shards; ``commit`` fsyncs them together and moves each over its shard."""

    def __init__(self, shard_dir: Path, ids: list[str]):
        self.shard_dir, self.ids = shard_dir, ids
        self.handles, self.temps = [], []

    def __enter__(self):
        for sid in self.ids:
            fd, tmp = tempfile.mkstemp(prefix=f".{sid}.jsonl.", suffix=".tmp", dir=self.shard_dir)
            self.temps.append(tmp)
            self.handles.append(os.fdopen(fd, "wb"))
        return self

    def commit(self) -> None:
        jobs = [
            (handle, tmp, shard_file(self.shard_dir, sid))
            for sid, handle, tmp in zip(self.ids, self.handles, self.temps)
        ]
        # one fsync at a time costs ~4 ms each here (4 s for 1000 shards); in flight together, 0.25 s
        with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
            list(pool.map(lambda job: _replace(*job), jobs))
        self.temps = []

    def __exit__(self, exc_type, exc, tb):
        for handle in self.handles:
            handle.close()
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _replace(handle, tmp: str, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    os.fchmod(handle.fileno(), FILE_MODE)
    handle.close()
    os.replace(tmp, path)


def _spool_input(input_path, spool, index, n_shards: int, keys: dict, media_root: str):
    """The one pass over the input: validate each record, stamp its media, append its shard line to
    ``spool`` (framed by shard and length) and its media to ``index``; return counts and content hashes."""
    counts = [0] * n_shards
    hashers = [hashlib.sha256() for _ in range(n_shards)]
    for _, record in iter_records(input_path, keys):
        media = record_media(record, keys)
        shard = _shard_index(media, record, n_shards)
        paths = [resolve_media(item, media_root) for item in media]
        stamp = media_stamp(paths)
        index.write(dumps_line([stamp, paths, shard]))
        if paths:
            record[MEDIA_STAMP] = stamp
        line = dumps_line(record)
        hashers[shard].update(line)
        spool.write(_FRAME.pack(shard, len(line)))
        spool.write(line)
        counts[shard] += 1
    return counts, [hasher.hexdigest() for hasher in hashers]


def _rewrite(shard_dir: Path, ids: list[str], changed: list[int], spool) -> None:
    """Copy the lines of the changed shards out of the spool into their files, a batch of handles at a time."""
    per_pass = min(MAX_OPEN_SHARDS, raise_open_file_limit(min(len(changed), MAX_OPEN_SHARDS) + 2))
    for start in range(0, len(changed), per_pass):
        batch = changed[start : start + per_pass]
        slots = {shard: slot for slot, shard in enumerate(batch)}
        with _ShardFiles(shard_dir, [ids[shard] for shard in batch]) as out:
            spool.seek(0)
            while header := spool.read(_FRAME.size):
                shard, size = _FRAME.unpack(header)
                line = spool.read(size)
                slot = slots.get(shard)
                if slot is not None:
                    out.handles[slot].write(line)
            out.commit()


def _write_shards(input_path, shard_dir: Path, ids: list[str], keys: dict, media_root: str, known: dict):
    """Bring every shard file up to date; return record counts, content hashes and the ids rewritten."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=shard_dir) as spool, atomic_open(shard_dir / INDEX_FILE, "wb") as index:
        counts, hashes = _spool_input(input_path, spool, index, len(ids), keys, media_root)
        if not sum(counts):  # one clear stop, not a plan of jobs over empty shards
            raise InputError(f"{input_path}: no records (an empty array or file): nothing to caption")
        wanted = dict(zip(ids, hashes))
        changed = [
            shard for shard, sid in enumerate(ids) if _current_sha(shard_dir, sid, known) != wanted[sid]
        ]
        _rewrite(shard_dir, ids, changed, spool)
    return counts, wanted, [ids[shard] for shard in changed]


def _current_sha(shard_dir: Path, sid: str, known: dict) -> str | None:
    if _shards_untouched(shard_dir, [sid], known):
        return known[sid]["sha256"]
    return _file_sha256(shard_file(shard_dir, sid))


def sync_shards(
    input_path: str | os.PathLike,
    shard_dir: str | os.PathLike,
    n_shards: int,
    keys: dict | None = None,
    media_root: str | os.PathLike | None = None,
    log=sys.stderr,
) -> dict:
    """Validate the input and bring ``shard_dir/<id>.jsonl`` up to date; return a summary.

    ``media_root``: where relative media paths start, as for the frames step (default: the input's folder).
    Raises :class:`vidcap.records.InputError` on a malformed input, before replacing any shard file.
    """
    keys = with_defaults("keys", keys)
    media_root = str(media_root) if media_root else os.path.dirname(str(input_path)) or "."
    shard_dir = Path(shard_dir)
    ids = shard_ids(n_shards)
    try:
        state = read_json(shard_dir / STATE_FILE)
    except (FileNotFoundError, ValueError):
        state = {}
    fingerprint = input_fingerprint(input_path, n_shards, keys, media_root)
    known = state.get("shards", {})
    if (
        state.get("input") == fingerprint
        and _shards_untouched(shard_dir, ids, known)
        and _media_unchanged(shard_dir, state.get("index"))
    ):
        # same input file (path, size, mtime), shard files and media stamps as last time: nothing to do
        total = sum(known[sid]["records"] for sid in ids)
        if log is not None:
            print(f"vidcap: {total} records in {n_shards} shards; input and media unchanged", file=log)
        return {"records": total, "shards": n_shards, "changed": []}

    counts, wanted, changed = _write_shards(input_path, shard_dir, ids, keys, media_root, known)
    for stale in shard_dir.glob("*.jsonl"):  # shards beyond the configured count belong to an older layout
        if stale.stem.isdigit() and stale.stem not in wanted:
            stale.unlink()
    _write_state(shard_dir, fingerprint, ids, wanted, counts)
    total = sum(counts)
    if log is not None:
        which = "" if len(changed) > 8 else f" ({', '.join(changed)})" if changed else ""
        print(
            f"vidcap: {total} records in {n_shards} shards; {len(changed)} shard file(s) updated{which}",
            file=log,
        )
    return {"records": total, "shards": n_shards, "changed": changed}


def _write_state(shard_dir: Path, fingerprint: list, ids: list[str], wanted: dict, counts: list[int]) -> None:
    shards = {}
    for sid, count in zip(ids, counts):
        st = shard_file(shard_dir, sid).stat()
        shards[sid] = {
            "sha256": wanted[sid],
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "records": count,
        }
    st = (shard_dir / INDEX_FILE).stat()
    index = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    write_json(shard_dir / STATE_FILE, {"input": fingerprint, "shards": shards, "index": index}, indent=None)
