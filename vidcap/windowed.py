"""Caption jobs for windowed videos: each window is its own request, results folded back per record.

A windowed record (vidcap.long_frames) becomes one :class:`WindowPending` per window that has frames,
its prompt prefixed with the window's time range. Window requests take result slots after the shard's
records, so halving and the result store work on them exactly as on whole records; :func:`fold` then
turns them into the record's ``caption_meta.windows`` (time order) before the result file is written.
A record with one window takes that window's caption; with two or more its caption is left to the
summary job (vidcap.summary), status ``ok`` unless every window failed.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from vidcap import frame_store
from vidcap.config import with_defaults
from vidcap.decode import FrameError
from vidcap.failures import raise_if_infra
from vidcap.prompts import Pending, unanswered_meta
from vidcap.result_keys import window_key
from vidcap.structured import Clock
from vidcap.windows import clip_phrase

WINDOW_KEY = "_window"  # [record slot, window number] in a window's own result, dropped by fold
# a request's answer fields (candidates.keep all: captions; output_format json: caption_json)
ANSWER_FIELDS = ("caption", "captions", "caption_json")


@dataclass
class WindowPending(Pending):
    window: int = 0
    clock: Clock | None = None  # where its JSON event times lie (answer_duration)


@functools.lru_cache(maxsize=8)
def times_absolute(model: str | None) -> bool:
    """Whether the model reads frame times from frames_indices / fps (Qwen3-VL's ``<t seconds>`` stamps):
    then a window's frames carry their true times in the video. Qwen2-VL has no time input and
    Qwen2.5-VL's temporal positions start at 0 for every video, so they see a window in its own clock."""
    from vidcap.budget import geometry_for

    return bool(model) and geometry_for(model).tokens_per_frame_group > 0


def window_clock(window: dict, absolute: bool) -> Clock:
    """A window's event times: within its span in the video's time (``absolute``), else within 0..its
    length, shifted by its start afterwards; either way the answer's events are times in the whole video."""
    start, end = float(window["start"]), float(window["end"])
    return Clock(start, end) if absolute else Clock(0.0, end - start, shift=start)


def answer_duration(item: Pending):
    """What a request's JSON event times are checked against: a window's clock, or the video's length."""
    if isinstance(item, WindowPending) and item.clock is not None:
        return item.clock
    videos = item.entry["videos"]
    return float(videos[0]["meta"]["duration"]) if videos else None


def is_windowed(entry: dict) -> bool:
    return len(entry["videos"]) == 1 and "windows" in (entry["videos"][0] or {})


def window_requests(
    slot,
    digest,
    entry,
    prompt,
    seed,
    results: list[dict],
    identity: str,
    model: str | None = None,
    timed: bool = False,
    heard=None,
    ask=None,
    marker: str = WINDOW_KEY,
) -> list[WindowPending]:
    """One request per decodable window, with its result-store key (``identity``: the caption settings'
    hash); each gets a result slot appended to ``results``, and the record's own result lists every
    window (those that could not be decoded as errors already) and every window's key. ``model``: the
    captioning model, whose family decides the windows' clocks (:func:`window_clock`); ``timed``: the answers
    hold event times (output_format json), so the clock is part of each window's key. ``heard``:
    (start, end) -> text put after a window's prompt (audio.mode transcript: its speech). ``ask``: a
    caption-set entry (vidcap.caption_set.Ask) whose window requests these are: its results carry
    ``marker`` = [record slot, entry name, window number], and the record's windows are listed already."""
    video = entry["videos"][0]
    if ask is None:
        results[slot]["caption_meta"]["windows"] = [window_result(w, None) for w in video["windows"]]
    pending = []
    for w, window in enumerate(video["windows"]):
        if "error" in window:
            continue
        sub = {
            "digest": digest,
            "videos": [
                {
                    "path": video["path"],
                    "frames": window["frames"],
                    "meta": window["meta"],
                    "content": window.get("content"),  # how the window's file is stored (frame_store)
                    **({"audio": window["audio"]} if "audio" in window else {}),  # audio.mode native
                }
            ],
            "images": [],
            "error": None,
        }
        # a video of one window is the whole video: no "clip of a longer video" to place it in
        text = (
            prompt
            if len(video["windows"]) == 1
            else f"{clip_phrase(window['start'], window['end'])} {prompt}"
        )
        if heard is not None:
            text += heard(window["start"], window["end"])
        results.append(
            {
                "digest": digest,
                "caption": None,
                "caption_meta": unanswered_meta(len(window["meta"]["frames_indices"])),
                marker: [slot, w] if ask is None else [slot, ask.name, w],
            }
        )
        clock = window_clock(window, times_absolute(model))
        item = WindowPending(
            len(results) - 1, digest, sub, text, seed, keep=[None], ask=ask, window=w, clock=clock
        )
        item.key = window_key(identity, text, sub["videos"][0], clock if timed else None)
        results[slot]["keys"].append(item.key)
        pending.append(item)
    return pending


def ensure_windows(entry: dict, frames_step: dict) -> None:
    """Extract a windowed video again when window frames are gone from the cache (as frames.ensure_frames);
    a video that can no longer be read becomes the record's error."""
    from vidcap.long_frames import cached_long

    video = entry["videos"][0]
    if all(frame_store.is_intact(w["frames"], w.get("content")) for w in video["windows"] if "frames" in w):
        return
    params = with_defaults("frames", frames_step.get("frames"))
    try:
        entry["videos"][0] = cached_long(
            video["path"], params, frames_step["long_video"], Path(frames_step["cache_dir"])
        )
    except FrameError as exc:
        raise_if_infra(exc, f"video {video['path']}", frames_step.get("attempt", 1))
        entry["videos"][0] = {"path": video["path"], "error": str(exc)}
        entry["error"] = f"{os.path.basename(video['path'])}: {exc}"


def fold(results: list[dict], n_records: int) -> list[dict]:
    """The shard's record results with their windows' results folded in (window slots dropped)."""
    out = results[:n_records]
    sent: dict[int, list[dict]] = {}
    for result in results[n_records:]:
        slot, w = result.pop(WINDOW_KEY)
        out[slot]["caption_meta"]["windows"][w] = window_result(
            None, result, out[slot]["caption_meta"]["windows"][w]
        )
        sent.setdefault(slot, []).append(result)
    for slot, result in enumerate(out):
        if "windows" in result["caption_meta"]:
            fold_record(result, sent.get(slot, []))
    return out


def fold_record(result: dict, sent: list[dict]) -> None:
    meta = result["caption_meta"]
    windows = meta["windows"]
    metas = [d["caption_meta"] for d in sent]
    meta.update(
        frames=sum(m["frames"] for m in metas),
        halved=any(m["halved"] for m in metas),
        prompt_tokens=sum(m["prompt_tokens"] or 0 for m in metas),
        output_tokens=sum(m["output_tokens"] or 0 for m in metas),
        seed=next((m["seed"] for m in metas), None),
        attempts=sum(m.get("attempts", 0) for m in metas),  # requests the record's windows took
    )
    if all(w["status"] == "error" for w in windows):
        meta.update(status="error", error=f"every window failed, e.g. {windows[0]['error']}")
    elif len(windows) == 1:  # the window's answer is the record's, with every field a short record has
        result.update({k: v for k, v in sent[0].items() if k in ANSWER_FIELDS})
        meta.update(status=windows[0]["status"], error=None, finish_reason=metas[0]["finish_reason"])
    else:  # the summary job writes caption and status
        meta.update(status="ok", error=None, summary=None)


def window_result(window: dict | None, done: dict | None = None, listed: dict | None = None) -> dict:
    """A window as caption_meta.windows lists it: from the manifest (not sent yet, or never: an error) or,
    with ``done``, from its request's result."""
    if done is None:
        return {
            "start": window["start"],
            "end": window["end"],
            "frames": None,
            "caption": None,
            "status": "error",
            "error": window.get("error"),
            "prompt_tokens": None,
            "output_tokens": None,
            "attempts": 0,
        }
    meta = done["caption_meta"]
    structured = {"caption_json": done["caption_json"]} if "caption_json" in done else {}
    return {
        **listed,
        "frames": meta["frames"],
        "caption": done["caption"],
        **structured,  # the window's object: what the summary of a JSON answer reads
        "status": meta["status"],
        "error": meta["error"],
        "prompt_tokens": meta["prompt_tokens"],
        "output_tokens": meta["output_tokens"],
        "attempts": meta.get("attempts", 0),
    }
