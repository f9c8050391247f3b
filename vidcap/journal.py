"""Finished records of a caption job, kept as they complete, so a retried job captions only the rest.

A job killed at 90% (time limit, preemption, node loss) leaves ``<result>.journal``: one JSON line
per finished record, keyed by what its caption depends on (record, frames, caption settings). A
rerun takes those results as they are and the final result file, written at the end, is the same
bytes an uninterrupted run writes. A torn last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vidcap.provenance import canonical_hash

SYNC_SECONDS = 5.0  # fsync at most this often: a kill -9 loses nothing, a node crash a few seconds


def journal_path(result_path: str | os.PathLike) -> Path:
    return Path(f"{result_path}.journal")


def record_key(settings_hash: str, digest: str, entry: dict) -> str:
    """What one record's caption depends on: the caption settings, the record and its cached frames."""
    frames = [m.get("frames") for m in entry["videos"] + entry["images"]]
    return canonical_hash([settings_hash, digest, frames])[:32]


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.done = self._read()
        self.handle = None
        self.synced = time.monotonic()

    def _read(self) -> dict[str, dict]:
        done = {}
        if not self.path.exists():
            return done
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    done[entry["key"]] = entry["result"]
                except (ValueError, KeyError, TypeError):  # a torn line from a killed job
                    continue
        return done

    def add(self, key: str, result: dict) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a", encoding="utf-8")
            self.handle.write("\n")  # ends a torn line a killed job may have left
        self.handle.write(json.dumps({"key": key, "result": result}, ensure_ascii=False) + "\n")
        self.handle.flush()
        if time.monotonic() - self.synced > SYNC_SECONDS:
            os.fsync(self.handle.fileno())
            self.synced = time.monotonic()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
