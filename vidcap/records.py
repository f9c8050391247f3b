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
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from vidcap.atomic import atomic_open, dumps_line

from vidcap.config import defaults, with_defaults

DEFAULT_KEYS = defaults("keys")  # the schema's; a name kept for callers


class InputError(ValueError):
    """The input file as a whole is unusable; the message names file, record index and key."""


def is_jsonl(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".jsonl", ".ndjson"))


def iter_records(path: str | os.PathLike, keys: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(index, record)`` for every record of a .json array or .jsonl file, validated, streaming.

    Memory stays bounded by one record, whatever the file size.
    """
    keys = with_defaults("keys", keys)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    raw = _iter_jsonl(path) if is_jsonl(path) else _iter_json_array(path)
    for index, record in raw:
        validate_record(record, index, keys, path)
        yield index, record


def _iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    index = 0
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: record {index} (line {line_no}): not valid UTF-8 ({exc.reason} "
                                 f"at byte {exc.start} of the line)") from None
            if not text.strip():
                continue
            try:
                yield index, json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: record {index} (line {line_no}): invalid JSON: {exc.msg} "
                                 f"at column {exc.colno}") from None
            index += 1


def _iter_json_array(path: Path, chunk_size: int = 1 << 16) -> Iterator[tuple[int, object]]:
    """Stream the elements of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, eof, consumed_lines, bad_utf8 = "", 0, False, 0, None
    with open(path, "rb") as handle:

        def more() -> bool:
            nonlocal buf, pos, eof, consumed_lines, bad_utf8
            if eof:
                return False
            block = handle.read(chunk_size)
            offset = handle.tell() - len(block)
            try:
                text = utf8.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # keep the valid prefix so the error is pinned on the record that holds the bad byte
                text = exc.object[:exc.start].decode("utf-8", "ignore")
                bad_utf8 = f"not valid UTF-8 ({exc.reason} near byte {offset + exc.start})"
                block = b""
            eof = not block
            consumed_lines += buf.count("\n", 0, pos)
            buf, pos = buf[pos:] + text, 0
            return True

        def fail(message: str) -> InputError:
            return InputError(f"{path}: record {index}: {bad_utf8}" if bad_utf8 else message)

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        def where() -> str:
            return f"line {consumed_lines + buf.count(chr(10), 0, pos) + 1}"

        index = 0
        more()
        if buf.startswith("\ufeff"):
            pos = 1
        first = skip_ws()
        if first != "[":
            hint = " (one object per line? name the file .jsonl)" if first == "{" else ""
            raise fail(f"{path}: expected a JSON array of records at {where()}{hint}")
        pos += 1
        if skip_ws() == "]":
            pos += 1
        else:
            while True:
                if skip_ws() == "":
                    raise fail(f"{path}: record {index}: file ends inside the array (truncated?)")
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as exc:
                        if not more():
                            raise fail(f"{path}: record {index} ({where()}): invalid JSON: {exc.msg}") from None
                pos = end
                yield index, value
                index += 1
                sep = skip_ws()
                if sep == ",":
                    pos += 1
                    continue
                if sep == "]":
                    pos += 1
                    break
                raise fail(f"{path}: record {index} ({where()}): expected ',' or ']' after record "
                                 f"{index - 1}" + (", found end of file (truncated?)" if sep == "" else ""))
        if skip_ws() != "" or bad_utf8:
            raise fail(f"{path}: unexpected data after the closing ']' at {where()}")


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def validate_record(record, index: int, keys: dict, path: str | os.PathLike = "<input>") -> None:
    """Raise InputError if a record cannot be processed at all (wrong structure, not bad media)."""
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {_type_name(record)}")
    vkey, ikey, ckey = keys["video"], keys["image"], keys["conversation"]
    if vkey not in record and ikey not in record:
        raise InputError(f"{where}: missing key '{vkey}' (each record needs '{vkey}' or '{ikey}')")
    for key in (vkey, ikey):
        if key in record:
            value = record[key]
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if not ok:
                raise InputError(f"{where}: key '{key}': expected a string or a list of strings, "
                                 f"got {_type_name(value)}")
    if ckey in record:
        conv = record[ckey]
        if not isinstance(conv, list) or not all(isinstance(turn, dict) for turn in conv):
            raise InputError(f"{where}: key '{ckey}': expected a list of turns like "
                             f'{{"from": "human", "value": ""}}, got {_type_name(conv)}')
    pkey = keys.get("prompt")
    if pkey and pkey in record and not isinstance(record[pkey], str):
        raise InputError(f"{where}: key '{pkey}': expected a string prompt, got {_type_name(record[pkey])}")


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
    """Content hash of a record (key order ignored), used to check results belong to their record."""
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
    """Absolute path of a media entry; relative entries are taken from ``media_root``."""
    return os.path.normpath(os.path.join(media_root, os.path.expanduser(path)))


class RecordWriter:
    """Write records to ``.jsonl`` (one per line) or a JSON array (indent 2, non-ASCII kept), atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.jsonl = is_jsonl(path)
        self._ctx = atomic_open(self.path)
        self.count = 0

    def __enter__(self) -> "RecordWriter":
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
