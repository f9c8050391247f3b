"""Reading, validating and writing the record files users hand to vidcap.

A record is a JSON object such as
``{"video": ["clips/a.mp4"], "conversation": [{"from": "human", "value": ""}]}``.
Whole-file problems (bad JSON, wrong types) raise :class:`InputError` naming the file, the record
index and the key, before any job runs. Per-record media problems are not errors here: they become
that record's ``caption_meta.status = "error"`` later, so nothing is lost.
"""

from __future__ import annotations

import codecs
import copy
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import ijson
import orjson

from vidcap.atomic import atomic_open, dumps_line
from vidcap.config import defaults, with_defaults
from vidcap.object_storage import is_url, join_url

DEFAULT_KEYS = defaults("keys")  # the schema's; a name kept for callers
# key that vidcap adds to each record line of a shard file: the size and mtime of the record's media files
MEDIA_STAMP = "_vidcap_media"
# a run of 19 digits may be an integer beyond 64 bits; a byte translation finds one 3x faster than a regex
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_RUN = b"0" * 19
# a \uXXXX escape of a UTF-16 surrogate without its partner: a character cut in half (a cut emoji). yajl
# (ijson's C backend) turns it into "?" silently, orjson refuses it: vidcap stops on it in both formats
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
# keys other dataset formats use, and the config key that makes vidcap read them
ALTERNATIVE_KEYS = {
    "video": ("videos", "video_path", "video_file", "video_paths", "clip", "path"),
    "image": ("images", "image_path", "image_file", "image_paths"),
    "conversation": ("conversations", "messages"),
}


class InputError(ValueError):
    """The input file as a whole is unusable; the message names file, record index and key."""


def is_jsonl(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"))


def is_parquet(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".parquet")


def iter_records(path: str | os.PathLike, keys: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(index, record)`` for every record of a .json array or .jsonl file, validated, streaming.

    Memory stays bounded by one record, whatever the file size. Also reads ``.jsonl.gz`` and ``.parquet``
    (one row a record; a null column is an absent key).
    """
    keys = with_defaults("keys", keys)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    if is_parquet(path):
        raw = _iter_parquet(path)
    else:
        raw = _iter_jsonl(path) if is_jsonl(path) else _iter_json_array(path)
    for index, record in raw:
        validate_record(record, index, keys, path)
        yield index, record


def _iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    """Yield ``(index, value)`` for every non-blank line of a JSONL file (orjson, one line at a time)."""
    index = 0
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        try:
            for line_no, line in enumerate(handle, 1):
                if line_no == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if not line.strip():
                    continue
                try:
                    yield index, loads_line(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InputError(
                        f"{path}: record {index} (line {line_no}): {_line_problem(line, exc)}"
                    ) from None
                index += 1
        except (gzip.BadGzipFile, EOFError) as exc:  # not gzip, or cut short
            raise InputError(f"{path}: record {index}: unreadable gzip data ({exc})") from None


def loads_line(line: bytes):
    """One JSON value from one line: orjson, or the stdlib where orjson would round a huge integer."""
    if _LONG_RUN in line.translate(_DIGITS):  # orjson makes floats of integers beyond 64 bits; json does not
        value = json.loads(line, parse_constant=_reject_constant)
        if b"\\u" in line:  # the stdlib keeps a lone surrogate where orjson refuses it: refuse it too
            _refuse_lone_surrogate(value)
        return value
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):  # name the key: the stdlib reads the line and keeps the surrogate
            _refuse_lone_surrogate(json.loads(line, parse_constant=_reject_constant))
        raise


class LoneSurrogateError(ValueError):
    """A string holds half of a UTF-16 surrogate pair; ``key`` says where in the record."""

    def __init__(self, key: str):
        super().__init__(
            f"key {key}: a lone UTF-16 surrogate escape (half of a character, e.g. a cut emoji "
            '"\\ud83d"): fix that text; vidcap stops on it in .json and .jsonl input alike'
        )
        self.key = key


def _refuse_lone_surrogate(value) -> None:
    where = lone_surrogate_key(value)
    if where is not None:
        raise LoneSurrogateError(where)


def lone_surrogate_key(value, where: str = "") -> str | None:
    """Where in ``value`` a string (or object key) holds a lone surrogate, e.g. "'conversation'[0]['value']"."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(the record)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate_key(key, where + repr(key)) or lone_surrogate_key(
                item, f"{where}[{key!r}]" if where else repr(key)
            )
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate_key(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _line_problem(line: bytes, exc: Exception) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 ({bad.reason} at byte {bad.start} of the line)"
    if isinstance(exc, LoneSurrogateError):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at column {exc.pos + 1}"
    return f"invalid JSON: {exc}"


def _iter_json_array(path: Path, chunk_size: int = 1 << 16) -> Iterator[tuple[int, object]]:
    """Stream the elements of a top-level JSON array (ijson, C backend), memory bounded by one element."""
    index = 0
    with open(path, "rb") as handle:
        _seek_array_start(handle, path, chunk_size)
        scan = _SurrogateScan(handle)
        try:
            for value in ijson.items(scan, "item", use_float=True, buf_size=chunk_size):
                if scan.found:  # yajl has made "?" of a lone surrogate somewhere ahead: read exactly
                    yield from _iter_json_array_exact(path, index, chunk_size)
                    return
                yield index, value
                index += 1
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise InputError(_array_problem(path, index, exc)) from None


class _SurrogateScan:
    """A reader for ijson that notes whether the bytes read so far hold a lone surrogate escape.

    ijson reads a chunk before it yields the records in it, so the note is up before such a record is
    yielded. A pair split across two chunks may be noted too: the exact reader then finds nothing wrong.
    """

    def __init__(self, handle):
        self.handle, self.found, self._tail = handle, False, b""

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        if not self.found and b"\\u" in self._tail + chunk:
            self.found = _LONE_SURROGATE.search(self._tail + chunk) is not None
        self._tail = chunk[-11:]
        return chunk


def _iter_json_array_exact(path: Path, start: int, chunk_size: int) -> Iterator[tuple[int, object]]:
    """Records ``start``... of a JSON array by ijson's pure-Python backend, which keeps lone surrogates
    (slow: only for a file that holds one); the first record with one stops the run, naming its key."""
    from ijson.backends import python as exact

    index = start
    with open(path, "rb") as handle:
        _seek_array_start(handle, path, chunk_size)
        try:
            for i, value in enumerate(exact.items(handle, "item", use_float=True, buf_size=chunk_size)):
                if i < start:
                    continue
                where = lone_surrogate_key(value)
                if where is not None:
                    raise InputError(f"{path}: record {i}: {LoneSurrogateError(where)}")
                yield i, value
                index = i + 1
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise InputError(_array_problem(path, index, exc)) from None


def _iter_parquet(path: Path, batch_rows: int = 1024) -> Iterator[tuple[int, object]]:
    """Rows of a Parquet file as records, a batch at a time (pyarrow); a null column is an absent key."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: Parquet input needs pyarrow (pip install pyarrow)") from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield index, {key: value for key, value in row.items() if value is not None}
                index += 1
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path}: unreadable Parquet file ({exc})") from None


def _seek_array_start(handle, path: Path, chunk_size: int) -> None:
    """Leave ``handle`` at the opening '[' (past a BOM and blanks), or say what the file holds instead."""
    head = handle.read(chunk_size)
    stripped = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
    if stripped[:1] != b"[":
        what = (
            "an empty file" if not stripped else "a JSON object" if stripped[:1] == b"{" else "something else"
        )
        hint = " (one object per line? name the file .jsonl)" if stripped[:1] == b"{" else ""
        raise InputError(f"{path}: expected a JSON array of records, found {what}{hint}")
    handle.seek(len(head) - len(stripped))


def _array_problem(path: Path, index: int, exc: Exception) -> str:
    """yajl's message, reduced to its first line and the text it points at, pinned on a record."""
    if isinstance(exc, UnicodeDecodeError):
        return f"{path}: record {index}: not valid UTF-8 ({exc.reason})"
    raw = exc.args[0] if exc.args else str(exc)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    lines = [line.strip() for line in text.splitlines()]
    problem = lines[0] if lines else type(exc).__name__
    near = f" near {lines[1]!r}" if len(lines) > 2 and lines[1] else ""
    if "trailing garbage" in problem:
        return f"{path}: unexpected data after the closing ']'{near}"
    if "premature EOF" in problem:
        return f"{path}: record {index}: invalid JSON: the file ends inside the array (truncated?)"
    if "integer overflow" in problem:
        near += " (integers beyond 64 bits: write them as strings, or use .jsonl)"
    if "UTF8" in problem:
        return f"{path}: record {index}: not valid UTF-8{near}"
    return f"{path}: record {index}: invalid JSON: {problem.removeprefix('parse error: ')}{near}"


def _type_name(value) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def validate_record(record, index: int, keys: dict, path: str | os.PathLike = "<input>") -> None:
    """Raise InputError if a record cannot be processed at all (wrong structure, not bad media)."""
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {_type_name(record)}")
    if MEDIA_STAMP in record:
        raise InputError(f"{where}: key '{MEDIA_STAMP}' is reserved (vidcap stamps media files with it)")
    vkey, ikey, ckey = keys["video"], keys["image"], keys["conversation"]
    if vkey not in record and ikey not in record:
        raise InputError(
            f"{where}: missing key '{vkey}' (each record needs '{vkey}' or '{ikey}')"
            + _key_hint(record, keys, ("video", "image"))
        )
    if ckey not in record and ("conversations" in record or "messages" in record):
        raise InputError(
            f"{where}: no key '{ckey}', but other turns are there"
            + _key_hint(record, keys, ("conversation",))
        )
    for key in (vkey, ikey):
        if key in record:
            value = record[key]
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
            if not ok:
                raise InputError(
                    f"{where}: key '{key}': expected a string or a list of strings, got {_type_name(value)}"
                )
    if ckey in record:
        conv = record[ckey]
        if not isinstance(conv, list) or not all(isinstance(turn, dict) for turn in conv):
            raise InputError(
                f"{where}: key '{ckey}': expected a list of turns like "
                f'{{"from": "human", "value": ""}}, got {_type_name(conv)}'
            )
    pkey = keys.get("prompt")
    if pkey and pkey in record and not isinstance(record[pkey], str):
        raise InputError(f"{where}: key '{pkey}': expected a string prompt, got {_type_name(record[pkey])}")


def _key_hint(record: dict, keys: dict, roles: tuple[str, ...]) -> str:
    """A hint naming the config key that reads the record's own key (keys.video: videos, ...)."""
    found = [
        (role, name)
        for role in roles
        for name in ALTERNATIVE_KEYS[role]
        if name in record and name != keys[role]
    ]
    if not found:
        return ""
    names = ", ".join(repr(name) for _, name in found)
    settings = ", ".join(f"keys.{role}: {name}" for role, name in found)
    turns = ' (vidcap reads turns as {"from": ..., "value": ...})' if "conversation" in roles else ""
    return f"; this record has {names}: set {settings} in the config{turns}"


def media_list(record: dict, key: str) -> list[str]:
    """A record's videos or images as a list; a scalar string counts as a one-item list."""
    value = record.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def record_media(record: dict, keys: dict) -> list[str]:
    """All of a record's media paths: its videos, then its images."""
    return media_list(record, keys["video"]) + media_list(record, keys["image"])


def record_digest(record: dict) -> str:
    """Content hash of a record (key order ignored), used to check results belong to their record.

    A shard line's media stamp is not part of the record: a shard line and its input record agree.
    """
    if MEDIA_STAMP in record:
        record = {key: value for key, value in record.items() if key != MEDIA_STAMP}
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def record_prompt(record: dict, keys: dict, default_prompt: str) -> str:
    pkey = keys.get("prompt")
    if pkey and isinstance(record.get(pkey), str) and record[pkey].strip():
        return record[pkey]
    return default_prompt


def with_prompt(record: dict, keys: dict, prompt: str) -> dict:
    """Copy of ``record`` whose first human turn holds ``prompt`` (one is added if there is none)."""
    out = copy.copy(record)
    ckey = keys["conversation"]
    conversation = [dict(turn) for turn in record.get(ckey, [])]
    for turn in conversation:
        if turn.get("from") in ("human", "user"):
            turn["value"] = prompt
            break
    else:
        conversation.insert(0, {"from": "human", "value": prompt})
    out[ckey] = conversation
    return out


def resolve_media(path: str, media_root: str | os.PathLike) -> str:
    """Absolute path or URL of a media entry; relative entries are taken from ``media_root`` (a folder
    or an object-storage URL, docs/object-storage.md)."""
    if is_url(path):
        return path
    if path.startswith("~"):  # expanduser looks at nothing else, and is slow: 100k records pass here
        path = os.path.expanduser(path)
    if is_url(media_root) and not os.path.isabs(path):
        return join_url(media_root, path)
    return os.path.normpath(os.path.join(media_root, path))


class RecordWriter:
    """Write records to ``.jsonl`` (one per line) or a JSON array (indent 2, non-ASCII kept), atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.jsonl = is_jsonl(path)
        self._ctx = atomic_open(self.path)
        self.count = 0

    def __enter__(self):
        self._handle = self._ctx.__enter__()
        if not self.jsonl:
            self._handle.write("[")
        return self

    def write(self, record: dict) -> None:
        if self.jsonl:
            self._handle.write(dumps_line(record))
        else:
            text = json.dumps(record, ensure_ascii=False, indent=2)
            self._handle.write(("," if self.count else "") + "\n  " + text.replace("\n", "\n  "))
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self.jsonl:
            self._handle.write("\n]\n" if self.count else "]\n")
        return self._ctx.__exit__(exc_type, exc, tb)
