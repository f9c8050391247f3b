"""Visual caption-set entries of long videos: each entry's window answers into one answer for the video.

In the caption job every window of a windowed record answers each visual entry (vidcap.caption_set.fold
puts those answers in ``caption_meta.windows[i].set[NAME]``). Here, for a record of two or more windows,
each entry is summarised as the primary caption is (vidcap.summary): the summary prompt, the entry's
window answers in time order, then the entry's prompt as the question asked of the whole video. The
request has the entry's own system prompt, sampling, max_tokens (else long_video.summary_max_tokens) and
output format, and is kept in the result store on its own key (the entry's settings and the exact text),
so adding an entry asks only that entry's summaries. The answer is written where a short record's
entry is: ``caption_set[NAME]``, ``caption_set_json[NAME]``, ``caption_set_captions[NAME]``, with its
status and tokens in ``caption_meta.set[NAME].summary``.
"""

from __future__ import annotations

import copy

from vidcap.provenance import model_identity
from vidcap.result_keys import summary_identity, summary_key
from vidcap.store import storable
from vidcap.text_requests import TextRequest, read_answer, seeded_request

# the summary job's settings an entry's summary shares (its own replace system prompt, sampling and format)
SHARED_KEYS = ("max_model_len", "engine_numerics", "candidates")


def entry_windows(result: dict, name: str) -> list[dict]:
    """The record's windows as entry ``name`` answered them (what vidcap.summary.summary_text reads)."""
    return [
        {"start": w["start"], "end": w["end"], **w["set"][name]}
        for w in result["caption_meta"]["windows"]
        if name in (w.get("set") or {})
    ]


def needs_entry_summary(result: dict, name: str) -> bool:
    meta = result["caption_meta"]
    entry = (meta.get("set") or {}).get(name)
    return entry is not None and entry["status"] != "error" and len(meta.get("windows") or ()) >= 2


class EntrySummaries:
    """The visual entries' summaries of one summary job. ``params``: vidcap.settings.visual_summary_params
    (config order); ``settings``: the summary job's (summary prompt, engine, candidates)."""

    def __init__(self, params: list[dict], settings: dict, store):
        self.params, self.settings, self.store = params, settings, store
        self.keys: list[dict[str, str]] = []  # per record in file order: entry name -> its summary key
        self.answers: dict[str, dict] = {}
        self.todo: dict[str, TextRequest] = {}
        self.asked_by: dict[str, tuple[dict, float]] = {}  # key -> (entry params, video duration)
        self.counts = {"asked": 0, "stored": 0}
        self._identity: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.params)

    def identity(self, p: dict) -> str:
        if p["name"] not in self._identity:
            fields = {k: self.settings.get(k) for k in SHARED_KEYS}
            fields.update({k: p[k] for k in ("system_prompt", "sampling", "output_format", "output_schema")})
            self._identity[p["name"]] = summary_identity(fields, model_identity(self.settings["model"]))
        return self._identity[p["name"]]

    def collect(self, result: dict) -> None:
        """Note the next record's entry summaries: stored ones are read, the others queued."""
        from vidcap.summary import summary_text, video_duration

        keys = {}
        for p in self.params:
            if not needs_entry_summary(result, p["name"]):
                continue
            text = summary_text(self.settings["prompt"], entry_windows(result, p["name"]), p["prompt"])
            key = keys[p["name"]] = summary_key(self.identity(p), text)
            if key in self.answers or key in self.todo:
                continue
            if not self.store.recall(key, self.answers, self.counts):
                self.todo[key] = self.request(p, text)
                self.asked_by[key] = (p, video_duration(result))
        self.keys.append(keys)

    def request(self, p: dict, text: str) -> TextRequest:
        n = int(self.settings["candidates"]["n"])
        return seeded_request(p["system_prompt"], text, p["sampling"], n, p["output_schema"])

    def answer(self, engine) -> None:
        """Ask the engine (vidcap.text_requests.TextEngine) every queued summary; store each answer."""
        self.counts["asked"] += len(self.todo)
        keep = self.settings["candidates"]["keep"]
        for key, reply in engine.answer(self.todo).items():
            p, duration = self.asked_by[key]
            self.answers[key] = read_answer(reply, keep, p["output_schema"], duration)
            if storable(self.answers[key]):
                self.store.put(key, self.answers[key])

    def apply(self, result: dict, i: int) -> None:
        """Write record ``i``'s entry summaries where a short record has its entries' answers."""
        for name, key in self.keys[i].items():
            answer = copy.deepcopy(self.answers[key])
            meta = result["caption_meta"]["set"][name]
            result["caption_set"][name] = answer.pop("text", None)
            for field, part in (("caption_set_captions", "captions"), ("caption_set_json", "json")):
                if part in answer:
                    result.setdefault(field, {})[name] = answer.pop(part)
            meta["summary"] = answer
            meta["status"], meta["finish_reason"] = answer["status"], answer["finish_reason"]
            meta["error"] = None if answer["status"] != "error" else f"summary: {answer['error']}"
            result.setdefault("keys", []).append(key)

    def report(self) -> str:
        c = self.counts
        return f", entry summaries: {c['asked']} asked, {c['stored']} from the result store"
