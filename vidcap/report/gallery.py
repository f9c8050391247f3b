"""The caption gallery's data: which records to show, their frames (contact sheets) and the join.

The gallery pairs each output record with its frames manifest entry the way the merge step does
(the k-th input record of shard s is entry k of that shard's manifest), checked by record digest, so
a stale manifest is never shown as a record's frames.
"""

from __future__ import annotations

import base64
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from vidcap import frame_store
from vidcap.atomic import read_json
from vidcap.config import with_defaults
from vidcap.records import record_digest, record_media
from vidcap.shards import iter_sharded_records
from vidcap.stats import iter_output

THUMB_HEIGHT = 64
THUMBS_PER_VIDEO = 8
GALLERY_MAX_ERRORS = 500  # every error up to this many; the reasons table counts all of them


# --------------------------------------------------------------------------------- contact sheet
def thumbnail_indices(n_frames: int, limit: int = THUMBS_PER_VIDEO) -> list[int]:
    """Up to ``limit`` frame positions spread evenly from first to last."""
    if n_frames <= limit:
        return list(range(n_frames))
    return np.linspace(0, n_frames - 1, limit).round().astype(int).tolist()


def contact_sheet(
    arrays: list[np.ndarray], thumb_height: int = THUMB_HEIGHT, limit: int = THUMBS_PER_VIDEO, gap: int = 2
):
    """One row of small thumbnails per array (T x H x W x 3 frames, or H x W x 3 for an image)."""
    from PIL import Image

    rows = []
    for array in arrays:
        frames = array[None] if array.ndim == 3 else array
        thumbs = []
        for i in thumbnail_indices(len(frames), limit):
            frame = np.asarray(frames[i])
            w = max(1, round(frame.shape[1] * thumb_height / frame.shape[0]))
            thumbs.append(Image.fromarray(frame).resize((w, thumb_height), Image.BILINEAR))
        rows.append(thumbs)
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in rows)
    height = len(rows) * thumb_height + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    for r, row in enumerate(rows):
        x = 0
        for thumb in row:
            sheet.paste(thumb, (x, r * (thumb_height + gap)))
            x += thumb.width + gap
    return sheet


def jpeg_data_uri(image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def media_note(media: dict, array: np.ndarray) -> str:
    """What a contact sheet row shows: frame count, time span, sizes (sampled and source)."""
    name = os.path.basename(media["path"])
    if array.ndim != 4:
        return f"{name}: image {array.shape[1]}x{array.shape[0]}"
    meta = media.get("meta", {})
    times = [i / meta["fps"] for i in meta.get("frames_indices", [])] if meta.get("fps") else []
    span = f" at {times[0]:.1f}-{times[-1]:.1f} s" if times else ""
    shown = len(thumbnail_indices(len(array)))
    return (
        f"{name}: {len(array)} frames{span}, {meta.get('width')}x{meta.get('height')} from "
        f"{meta.get('source_width')}x{meta.get('source_height')}"
        + (f" (showing {shown})" if shown < len(array) else "")
    )


def record_strip(entry: dict | None) -> tuple[str | None, str]:
    """(JPEG data URI of the record's contact sheet or None, a note on what it shows)."""
    if entry is None:
        return None, "no frames manifest entry for this record"
    arrays, notes = [], []
    for media in entry.get("videos", []) + entry.get("images", []):
        if not media or "frames" not in media:
            continue
        try:
            array = frame_store.read(media["frames"], media.get("content"))
        except (OSError, ValueError):  # CacheEntryError too
            notes.append(f"{os.path.basename(media['path'])}: frames no longer in the cache")
            continue
        arrays.append(array)
        notes.append(media_note(media, array))
    if not arrays:
        return None, "; ".join(notes) or "no frames (the media could not be read)"
    return jpeg_data_uri(contact_sheet(arrays)), "; ".join(notes)


# ------------------------------------------------------------------------------------- selection
def gallery_selection(
    n_records: int, error_indices: list[int], sample: int, max_errors: int = GALLERY_MAX_ERRORS
) -> list[int]:
    """Record indices to show: all of a small build; else ``sample`` evenly spaced plus the errors."""
    if n_records <= sample:
        return list(range(n_records))
    chosen = {i * n_records // sample for i in range(sample)}
    chosen.update(error_indices[:max_errors])
    return sorted(chosen)


# ------------------------------------------------------------------------------------------ join
def gallery_items(
    shard_dir: str, output_path: str, manifests: list[str], keys: dict, selected: list[int]
) -> list[dict]:
    """The selected output records with their manifest entries (frames), in output order.

    ``shard_dir``: the build's shards (the records in input order); ``manifests``: one per shard, in
    shard order (shard s of the records is ``manifests[s]``).
    """
    keys = with_defaults("keys", keys)
    wanted = set(selected)
    items = []
    outputs = iter_output(output_path)
    for index, record, shard, position in iter_sharded_records(shard_dir, len(manifests)):
        out_index, out = next(outputs)
        if index in wanted:
            items.append(
                {
                    "index": out_index,
                    "record": out,
                    "shard": shard,
                    "position": position,
                    "digest": record_digest(record),
                    "entry": None,
                }
            )
    by_shard = defaultdict(list)
    for item in items:
        by_shard[item["shard"]].append(item)
    for shard, shard_items in by_shard.items():
        path = Path(manifests[shard])
        entries = read_json(path)["records"] if path.exists() else []
        for item in shard_items:
            entry = entries[item["position"]] if item["position"] < len(entries) else None
            if entry is not None and entry.get("digest") == item["digest"]:
                item["entry"] = entry
    return items


def gallery_card(item: dict, keys: dict) -> dict:
    """What the gallery template shows of one record (plain values: the template escapes)."""
    record = item["record"]
    meta = record.get("caption_meta") or {}
    strip, note = record_strip(item["entry"])
    facts = [
        f"{meta[name]} {label}"
        for name, label in (
            ("frames", "frames"),
            ("prompt_tokens", "prompt tokens"),
            ("output_tokens", "output tokens"),
        )
        if meta.get(name) is not None
    ]
    caption = record.get(keys["caption"])
    timeline = window_timeline(item["entry"], meta.get("windows"))
    if timeline:
        strip, note = None, f"long video in {len(timeline)} windows: timeline below"
    return {
        "index": item["index"],
        "status": meta.get("status", "unknown"),
        "strip": strip,
        "note": note,
        "media": ", ".join(record_media(record, keys)),
        "facts": facts,
        "error": meta.get("error"),
        "caption": caption if isinstance(caption, str) else None,
        "timeline": timeline,
        "caption_set": caption_set_rows(record, meta),
        **heard(record, meta),
    }


def caption_set_rows(record: dict, meta: dict) -> list[dict]:
    """Every caption-set entry of a record (config order): its name, status, caption or error."""
    metas = meta.get("set") or {}
    rows = []
    for name, text in (record.get("caption_set") or {}).items():
        entry = metas.get(name) or {}
        rows.append(
            {
                "name": name,
                "status": entry.get("status", "unknown"),
                "error": entry.get("error"),
                "caption": text if isinstance(text, str) else None,
            }
        )
    return rows


def heard(record: dict, meta: dict) -> dict:
    """audio.mode transcript: the record's segments as lines, or why there are none (nothing otherwise)."""
    if "transcript" not in record:
        return {}
    segments = record["transcript"] or []
    lines = [f"[{s['start']:.1f}-{s['end']:.1f} s] {s['text']}" for s in segments]
    return {"transcript": "\n".join(lines), "audio_note": meta.get("audio")}


WINDOW_THUMBS = 4


def window_timeline(entry: dict | None, windows: list[dict] | None) -> list[dict]:
    """A windowed video's windows in time order: a few thumbnails, time range, caption and status each."""
    videos = (entry or {}).get("videos") or []
    if not windows or len(videos) != 1 or "windows" not in (videos[0] or {}):
        return []
    rows = []
    for listed, window in zip(windows, videos[0]["windows"]):
        strip = None
        if "frames" in window:
            try:
                array = frame_store.read(window["frames"], window.get("content"))
                strip = jpeg_data_uri(contact_sheet([array], THUMB_HEIGHT * 3 // 4, WINDOW_THUMBS))
            except (OSError, ValueError):
                strip = None  # gone from the cache: the text still shows
        rows.append(
            {
                "span": f"{listed['start']:.1f}-{listed['end']:.1f} s",
                "strip": strip,
                "status": listed["status"],
                "error": listed.get("error"),
                "caption": listed.get("caption"),
            }
        )
    return rows
