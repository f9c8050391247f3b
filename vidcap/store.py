"""Per-record results kept by what they depend on: a content-addressed store that outlives every job.

A caption job looks each of its requests up here first and sends only the misses; each answer is
written here the moment it is settled, so a killed job loses nothing it finished and a shard that is
rebuilt (grown, resharded, retried) sends only what is new. Windows and summaries use the same store.

The key of an entry is a hash of everything its answer depends on (:mod:`vidcap.result_keys` builds
them), never of where the record sits: the same clip with the same prompt and settings is one entry,
whichever shard or position it is in. An entry is one small JSON file, ``<root>/<key[:2]>/<key>.json``,
written whole to a temporary name and renamed, so two jobs writing the same entry (one video listed in
two shards) leave one complete file, and a reader never sees a torn one. A file that does not parse
(a power loss before the page cache reached the disk) is a miss.

Only answers that would come out the same again are stored: captions and their guard verdicts, and
errors that vidcap decides from the inputs and keyed settings alone (too long for the context, counted
by vidcap before sending). A request the engine or a server refused (a 4xx, a timeout, a server with a
smaller context than configured) is left out, so the next build of its shard asks again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidcap.atomic import atomic_open

# errors vidcap decides from the record and the keyed settings: asking again would give the same answer
DETERMINISTIC_ERRORS = ("too long",)


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = self.writes = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored value of ``key`` (a fresh object per call), or None."""
        try:
            with open(self.path(key), encoding="utf-8") as handle:
                entry = json.load(handle)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, UnicodeDecodeError):  # cut short by a crash: answer it again
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        self.hits += 1
        return entry["value"]

    def recall(self, key: str, answers: dict, counts: dict) -> bool:
        """Put the stored value of ``key`` into ``answers`` and count it in ``counts["stored"]``; False (and
        nothing changed) when it is not stored, so the caller asks it."""
        stored = self.get(key)
        if stored is None:
            return False
        answers[key] = stored
        counts["stored"] += 1
        return True

    def has(self, key: str) -> bool:
        """Whether ``key`` is stored (a cheap look, not counted; :meth:`get` still decides)."""
        return self.path(key).is_file()

    def put(self, key: str, value: dict) -> None:
        # written whole and renamed (two writers leave one complete entry); not fsynced, like the frame
        # cache: an entry a power cut loses is a miss, asked again
        with atomic_open(self.path(key), durable=False) as handle:
            json.dump(
                {"key": key, "value": value}, handle, ensure_ascii=False
            )  # key order kept: output bytes
        self.writes += 1


def storable(meta: dict) -> bool:
    """Whether a settled result may be kept: an answer, or an error that only the inputs decide."""
    if meta.get("status") != "error":
        return True
    return str(meta.get("error") or "").startswith(DETERMINISTIC_ERRORS)
