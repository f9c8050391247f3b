"""The summary step: the window captions of a long video, in time order, into one caption.

Reads a shard's caption results and writes the same lines, in the same order, with every record of
two or more windows given ``caption`` = a text-only answer of the summary model (the captioning
model, used as a text model, unless long_video.summary_model names another) and
``caption_meta.summary`` = its status and tokens. The summary answers as a short record's caption would
(``candidates``: ``captions``; ``output_format: json``: ``caption_json``), and a record asked its own
prompt (keys.prompt) has it asked of the whole video. Each visual caption-set entry of such a record is
summarised the same way from that entry's window answers (vidcap.entry_summaries). Other records pass
through unchanged, and then derived caption-set entries (vidcap.derived) are applied to every record's
final texts. Each summary
is kept in the result store (vidcap.store) under its settings and the exact text it is asked, which
holds the window captions, so a shard without new summaries to write starts no engine, and two records
of the same video share one request. A record whose summary fails (its prompt too long, a request
refused) is an error with the reason; an engine failure raises, so no file is written and Snakemake
retries the job.
"""

from __future__ import annotations

import copy
import json
import sys
import time

from vidcap import derived
from vidcap.atomic import atomic_open, dumps_line, iter_jsonl
from vidcap.config import with_defaults
from vidcap.entry_summaries import EntrySummaries
from vidcap.provenance import model_identity
from vidcap.records import record_prompt
from vidcap.result_keys import summary_identity, summary_key
from vidcap.store import ResultStore, storable
from vidcap.structured import load_schema
from vidcap.text_requests import TextEngine, TextRequest, read_answer, seeded_request

# what a summary's answer depends on (its key's identity); derived entries and the job's engine are not
SUMMARY_PARAM_KEYS = (
    "model",
    "prompt",
    "system_prompt",
    "sampling",
    "max_model_len",
    "engine_numerics",
    "candidates",
    "output_format",
    "output_schema",
)


def needs_summary(result: dict) -> bool:
    meta = result["caption_meta"]
    return meta["status"] != "error" and len(meta.get("windows") or ()) >= 2


def summary_text(prompt: str, windows: list[dict], question: str | None = None) -> str:
    """The summary instruction, then each captioned window as "From a s to b s: answer", in time order
    (a JSON answer as its object, events in the video's time); with a record's own ``question``, a last
    paragraph asks it of the whole video."""
    lines = [prompt, ""]
    for window in sorted(windows, key=lambda w: w["start"]):
        if window["caption"] is not None and window["status"] != "error":
            answer = window["caption"].strip()
            if window.get("caption_json") is not None:
                answer = json.dumps(window["caption_json"], ensure_ascii=False, separators=(", ", ": "))
            speech = f" (speech: {window['speech']})" if window.get("speech") else ""  # audio.mode transcript
            lines.append(f"From {window['start']:.1f} s to {window['end']:.1f} s: {answer}{speech}")
    if question is not None:
        lines += ["", question_phrase(question)]
    return "\n".join(lines)


def question_phrase(question: str) -> str:
    """How a record's own prompt (keys.prompt) reaches its summary: every window was asked it."""
    return (
        f"Each clip above was asked: {question}\nAnswer this for the whole video, without mentioning clips."
    )


def record_questions(shard_path: str | None, settings: dict):
    """Per shard record, in order, its own prompt when keys.prompt gives it one other than the configured
    prompt, else None; all None without a shard file (direct calls)."""
    keys = with_defaults("keys", settings.get("keys"))
    if shard_path is None or not keys.get("prompt"):
        while True:
            yield None
    default = settings.get("caption_prompt")
    for record in iter_jsonl(shard_path):
        prompt = record_prompt(record, keys, default)
        yield None if prompt == default else prompt


def video_duration(result: dict) -> float:
    return max(w["end"] for w in result["caption_meta"]["windows"])


def summarize_shard(
    captions_path: str, out_path: str, settings: dict, log=sys.stderr, llm=None, shard_path: str | None = None
) -> dict:
    """Write ``out_path``: the caption results with summaries and derived caption-set entries; returns
    counts of what was done. ``shard_path``: the shard's records, for their own prompts (keys.prompt)."""
    started = time.monotonic()
    settings = {
        **settings,
        "sampling": with_defaults("sampling", settings.get("sampling")),
        "candidates": with_defaults("candidates", settings.get("candidates")),
    }
    schema = load_schema(settings.get("output_schema")) if settings.get("output_format") == "json" else None
    store = ResultStore(settings.get("store") or f"{out_path}.store")
    identity = None
    answers: dict[str, dict] = {}
    todo: dict[str, TextRequest] = {}  # summary key -> its request (records of one video ask one summary)
    durations: dict[str, float] = {}
    asked = []  # each long record's summary key, in file order (32 characters each), for the write pass
    visual = EntrySummaries(settings.get("visual") or [], settings, store)  # long videos' visual entries
    for result, question in zip(iter_jsonl(captions_path), record_questions(shard_path, settings)):
        if visual:
            visual.collect(result)
        if needs_summary(result):
            if identity is None:  # hashing the model's files only for a shard with summaries
                params = {k: settings.get(k) for k in SUMMARY_PARAM_KEYS}
                identity = summary_identity(params, model_identity(settings["model"]))
            text = summary_text(settings["prompt"], result["caption_meta"]["windows"], question)
            key = summary_key(identity, text)
            asked.append(key)
            stored = answers.get(key) or store.get(key)
            if stored is not None:
                answers[key] = stored
            elif key not in todo:
                todo[key] = summary_request(text, settings, schema)
                durations[key] = video_duration(result)
    with TextEngine(settings, log, llm) as engine:
        for key, answer in engine.answer(todo).items():
            keep = settings["candidates"]["keep"]
            answers[key] = read_answer(answer, keep, schema, durations[key])
            if storable(answers[key]):
                store.put(key, answers[key])
        if visual:
            visual.answer(engine)
        entries = derived.Derived(settings.get("derived") or [], settings, store)
        if entries:  # each derived entry applied to the records' final captions (a long video's summary)
            entries.answer(lambda: summarized(captions_path, asked, answers, visual), engine)
    counts = {"records": 0, "summarized": 0, "summary_errors": 0, "stored": len(answers) - len(todo)}
    with atomic_open(out_path) as handle:
        for long, result in summarized(captions_path, asked, answers, visual):  # one line in memory at a time
            counts["records"] += 1
            if long:
                counts["summarized" if result["caption_meta"]["status"] != "error" else "summary_errors"] += 1
            if entries:
                entries.apply(result, counts["records"] - 1)
            handle.write(dumps_line(result))
    print(
        f"{counts['records']} records, {counts['summarized']} summarised ({counts['stored']} distinct "
        f"summaries from the result store, {len(todo)} asked), {counts['summary_errors']} summary errors"
        f"{visual.report() if visual else ''}{entries.report() if entries else ''}, "
        f"{time.monotonic() - started:.1f} s",
        file=log,
        flush=True,
    )
    if entries:
        counts["derived"] = entries.counts
    if visual:
        counts["entry_summaries"] = visual.counts
    return counts


def summary_request(text: str, settings: dict, schema: dict | None) -> TextRequest:
    return seeded_request(
        settings["system_prompt"], text, settings["sampling"], int(settings["candidates"]["n"]), schema
    )


def summarized(captions_path: str, asked: list[str], answers: dict, visual: EntrySummaries | None = None):
    """(whether it has a summary, the result) per caption result, in file order, each long record's summary
    (``asked``: their keys in file order; ``answers``: by key) and its visual entries' (``visual``) applied."""
    keys = iter(asked)
    for i, result in enumerate(iter_jsonl(captions_path)):
        long = needs_summary(result)
        if long:
            key = next(keys)
            apply_summary(result, copy.deepcopy(answers[key]))
            result.setdefault("keys", []).append(key)
        if visual:
            visual.apply(result, i)
        yield long, result


def apply_summary(result: dict, answer: dict) -> None:
    """The summary's answer as the record's: ``caption`` and, as a short record has them, ``captions``
    (keep: all) and ``caption_json`` (output_format json); its status and tokens in caption_meta.summary."""
    meta = result["caption_meta"]
    result["caption"] = answer.pop("text", None)
    for field, name in (("captions", "captions"), ("caption_json", "json")):
        if name in answer:
            result[field] = answer.pop(name)
    meta["summary"] = answer
    meta["status"], meta["finish_reason"] = answer["status"], answer["finish_reason"]
    meta["error"] = None if answer["status"] != "error" else f"summary: {answer['error']}"
