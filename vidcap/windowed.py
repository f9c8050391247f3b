"""Caption jobs for windowed videos: each window is its own request, results folded back per record.

A windowed record (vidcap.long_frames) becomes one :class:`WindowPending` per window that has frames,
its prompt prefixed with the window's time range. Window requests take result slots after the shard's
records, so halving, journal and resume work on them exactly as on whole records; :func:`fold` then
turns them into the record's ``caption_meta.windows`` (time order) before the result file is written.
A record with one window takes that window's caption; with two or more its caption is left to the
summary job (vidcap.summary), status ``ok`` unless every window failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidcap.prompts import Pending
from vidcap.windows import clip_phrase

WINDOW_KEY = "_window"  # [record slot, window number] in a window's own result, dropped by fold


@dataclass
class WindowPending(Pending):
    window: int = 0


def is_windowed(entry: dict) -> bool:
    return len(entry["videos"]) == 1 and "windows" in (entry["videos"][0] or {})


def window_requests(slot, digest, entry, prompt, seed, results: list[dict]) -> list[WindowPending]:
    """One request per decodable window; each gets a result slot appended to ``results``."""
    video = entry["videos"][0]
    pending = []
    for w, window in enumerate(video["windows"]):
        if "error" in window:
            continue
        sub = {
            "digest": digest,
            "videos": [{"path": video["path"], "frames": window["frames"], "meta": window["meta"]}],
            "images": [],
            "error": None,
        }
        text = f"{clip_phrase(window['start'], window['end'])} {prompt}"
        results.append(
            {"digest": digest, "caption": None, "caption_meta": empty_meta(window), WINDOW_KEY: [slot, w]}
        )
        pending.append(WindowPending(len(results) - 1, digest, sub, text, seed, keep=[None], window=w))
    return pending


def empty_meta(window: dict) -> dict:
    return {
        "status": "error",
        "error": None,
        "frames": len(window["meta"]["frames_indices"]),
        "halved": False,
        "prompt_tokens": None,
        "output_tokens": None,
        "finish_reason": None,
        "seed": None,
    }


def fold(results: list[dict], n_records: int, entries: list[dict]) -> list[dict]:
    """The shard's record results with their windows' results folded in (window slots dropped)."""
    by_record: dict[int, dict[int, dict]] = {}
    for result in results[n_records:]:
        slot, w = result.pop(WINDOW_KEY)
        by_record.setdefault(slot, {})[w] = result
    out = results[:n_records]
    for slot, entry in enumerate(entries):
        if is_windowed(entry) and not entry["error"]:
            fold_record(out[slot], entry["videos"][0], by_record.get(slot, {}))
    return out


def fold_record(result: dict, video: dict, done: dict[int, dict]) -> None:
    windows = [window_result(w, done.get(i)) for i, w in enumerate(video["windows"])]
    good = [w for w in windows if w["status"] != "error"]
    meta = result["caption_meta"]
    sent = [d["caption_meta"] for d in done.values()]
    meta.update(
        frames=sum(m["frames"] for m in sent),
        halved=any(m["halved"] for m in sent),
        prompt_tokens=sum(m["prompt_tokens"] or 0 for m in sent),
        output_tokens=sum(m["output_tokens"] or 0 for m in sent),
        seed=next((m["seed"] for m in sent), None),
        windows=windows,
    )
    if not good:
        meta.update(status="error", error=f"every window failed, e.g. {windows[0]['error']}")
    elif len(windows) == 1:
        result["caption"] = windows[0]["caption"]
        meta.update(
            status=windows[0]["status"], error=None, finish_reason=done[0]["caption_meta"]["finish_reason"]
        )
    else:  # the summary job writes caption and status
        meta.update(status="ok", error=None, summary=None)


def window_result(window: dict, done: dict | None) -> dict:
    """A window as caption_meta.windows lists it."""
    out = {"start": window["start"], "end": window["end"], "frames": None, "caption": None}
    if done is None:  # never sent: its frames did not decode
        return {
            **out,
            "status": "error",
            "error": window.get("error"),
            "prompt_tokens": None,
            "output_tokens": None,
        }
    meta = done["caption_meta"]
    return {
        **out,
        "frames": meta["frames"],
        "caption": done["caption"],
        "status": meta["status"],
        "error": meta["error"],
        "prompt_tokens": meta["prompt_tokens"],
        "output_tokens": meta["output_tokens"],
    }
