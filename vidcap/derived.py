"""Derived caption-set entries: text-only rewrites of a record's final caption, in the summary step.

An entry with ``from: caption`` (or ``from: NAME``) asks the summary engine its prompt, followed by a blank
line and the source text: the record's ``caption`` (for a long video, its summary: the final caption) or
entry NAME's text, as cosmos-curator's and NeMo Curator's enhance step does. Each answer is kept in the
result store under the entry's settings, the summary engine's identity and the source text, so editing a
derived prompt asks only that entry again, and no caption job runs (its settings are not in the caption
rule's params). A record whose source is null or an error gets null text and an ``error`` status.
Entries derived from entries are asked after them (one engine call per level of such chains).
"""

from __future__ import annotations

import copy

from vidcap.caption_set import PRIMARY
from vidcap.provenance import model_identity
from vidcap.result_keys import derived_identity, derived_key
from vidcap.store import storable
from vidcap.text_requests import TextRequest, failed, read_answer, seeded_request

ANSWER_PARAM_KEYS = ("prompt", "system_prompt", "sampling", "output_format", "output_schema")


def derived_text(prompt: str, source: str) -> str:
    """What a derived entry asks: its prompt, a blank line, then the text it rewrites."""
    return f"{prompt}\n\n{source.strip()}"


def levels(params: list[dict]) -> list[list[dict]]:
    """The entries in groups, each asked once the ones before are answered (``params`` are in dependency
    order: vidcap.caption_set.derived_entries)."""
    names = {p["name"] for p in params}
    depth: dict[str, int] = {}
    for p in params:
        depth[p["name"]] = depth[p["from"]] + 1 if p["from"] in names else 0
    return [[p for p in params if depth[p["name"]] == d] for d in range(max(depth.values(), default=-1) + 1)]


class Derived:
    """The derived entries of one summary job. ``params``: vidcap.settings.derived_params (dependency
    order); ``settings``: the summary job's (summary engine, max_model_len, engine_numerics, and
    ``caption_set_names``: every entry's name in config order)."""

    def __init__(self, params: list[dict], settings: dict, store):
        self.params, self.settings, self.store = params, settings, store
        self.by_name = {p["name"]: p for p in params}
        self.order = list(settings.get("caption_set_names") or [p["name"] for p in params])
        self.keys: list[dict[str, str | None]] = []  # per record: entry name -> its key (None: no source)
        self.answers: dict[str, dict] = {}
        self.counts = {"asked": 0, "stored": 0, "errors": 0}
        self._identity: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.params)

    def identity(self, p: dict) -> str:
        if p["name"] not in self._identity:
            fields = {k: p[k] for k in ANSWER_PARAM_KEYS}
            fields.update(max_model_len=self.settings["max_model_len"])
            fields.update(engine_numerics=self.settings.get("engine_numerics"))
            self._identity[p["name"]] = derived_identity(fields, model_identity(self.settings["model"]))
        return self._identity[p["name"]]

    def answer(self, results, engine) -> None:
        """Find every record's answers in the store, ask the engine (vidcap.text_requests.TextEngine) the
        rest; ``results()``: a fresh iterator of (long, final result) per record, in file order."""
        for level in levels(self.params):
            todo, asked_by = {}, {}
            for i, (_, result) in enumerate(results()):
                if i == len(self.keys):
                    self.keys.append({})
                for p in level:
                    source = self.source_text(result, i, p["from"])
                    key = None if source is None else derived_key(self.identity(p), source)
                    self.keys[i][p["name"]] = key
                    if key is None or key in self.answers or key in todo:
                        continue
                    if not self.store.recall(key, self.answers, self.counts):
                        todo[key], asked_by[key] = self.request(p, source), p
            self.counts["asked"] += len(todo)
            for key, reply in engine.answer(todo).items():
                p = asked_by[key]
                self.answers[key] = read_answer(reply, "first", p["output_schema"], None)
                if storable(self.answers[key]):
                    self.store.put(key, self.answers[key])

    def request(self, p: dict, source: str) -> TextRequest:
        text = derived_text(p["prompt"], source)
        return seeded_request(p["system_prompt"], text, p["sampling"], 1, p["output_schema"])

    def source_text(self, result: dict, i: int, source: str) -> str | None:
        """The text an entry rewrites, or None when it has none (null, or an error)."""
        if source == PRIMARY:
            ok = result["caption_meta"]["status"] != "error"
            return result["caption"] if ok and result["caption"] is not None else None
        if source in self.by_name:  # another derived entry, answered at an earlier level
            key = self.keys[i].get(source)
            answer = self.answers.get(key) if key else None
            return answer["text"] if answer and answer["status"] != "error" else None
        meta = (result["caption_meta"].get("set") or {}).get(source) or {}
        text = (result.get("caption_set") or {}).get(source)  # a visual entry, from the caption job
        return text if text is not None and meta.get("status") != "error" else None

    def apply(self, result: dict, i: int) -> None:
        """Write record ``i``'s derived entries into ``caption_set``, ``caption_set_json`` (json entries: the
        object or null, as visual entries have it) and ``caption_meta.set`` (config order)."""
        texts = dict(result.get("caption_set") or {})
        objects = dict(result.get("caption_set_json") or {})
        metas = dict(result["caption_meta"].get("set") or {})
        for p in self.params:
            key = self.keys[i][p["name"]]
            if key is None:
                answer = failed(f"no text to derive from: {p['from']} is null or an error")
            else:
                answer = copy.deepcopy(self.answers[key])
                result.setdefault("keys", []).append(key)
            self.counts["errors"] += answer["status"] == "error"
            texts[p["name"]] = answer.pop("text")
            if p["output_format"] == "json":  # where a visual json entry's object is: one shape for all
                objects[p["name"]] = answer.pop("json", None)
            metas[p["name"]] = answer
        names = [n for n in self.order if n in texts] + [n for n in texts if n not in self.order]
        result["caption_set"] = {n: texts[n] for n in names}
        if objects:
            result["caption_set_json"] = {n: objects[n] for n in names if n in objects}
        result["caption_meta"]["set"] = {n: metas[n] for n in names if n in metas}

    def report(self) -> str:
        c = self.counts
        return f", derived entries: {c['asked']} asked, {c['stored']} from the result store, {c['errors']} errors"
