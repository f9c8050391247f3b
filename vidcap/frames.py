"""Sampling frames from videos (and loading images) into a per-file cache.

Frames are decoded once, resized inside ffmpeg to a size the Qwen-VL vision tower accepts as is
(multiples of 28, as Qwen's ``smart_resize``), and stored as uint8 THWC ``.npy`` arrays with a JSON
sidecar of metadata. The cache key covers the file's identity (path, size, mtime) and the frame
parameters, so a video moved to another shard, or listed twice, is decoded once.
Every failure becomes a readable per-record reason; nothing here raises for a bad video.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vidcap.atomic import atomic_open, iter_jsonl, read_json, write_json
from vidcap.records import DEFAULT_KEYS, media_list, record_digest, resolve_media

PATCH_FACTOR = 28  # patch 14 x spatial merge 2 (Qwen2-VL / Qwen2.5-VL)
FRAME_FACTOR = 2  # temporal patch: frame counts are even

DEFAULT_FRAMES = {
    "backend": "ffmpeg",
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 768,
    "min_pixels": 128 * 28 * 28,
    "max_pixels": 768 * 28 * 28,
    "total_pixels": None,
    "image_min_pixels": 4 * 28 * 28,
    "image_max_pixels": 1280 * 28 * 28,
    "timeout": 600,
}


class FrameError(Exception):
    """A video or image cannot be used; the message is the record's error reason."""


# ----------------------------------------------------------------------------------------- sizes
def round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = PATCH_FACTOR, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen's smart_resize: both sides multiples of ``factor``, pixels within bounds, aspect kept."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise FrameError(f"aspect ratio {width}x{height} is too extreme (over 200:1)")
    h_bar = max(factor, round_by(height, factor))
    w_bar = max(factor, round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def plan_frame_count(total_frames: int, source_fps: float, params: dict) -> int:
    """Frames to sample, as qwen_vl_utils' smart_nframes, but never fewer than 2 (short clips repeat)."""
    wanted = total_frames / max(source_fps, 1e-6) * params["fps"]
    lo = math.ceil(params["min_frames"] / FRAME_FACTOR) * FRAME_FACTOR
    hi = max(FRAME_FACTOR, math.floor(params["max_frames"] / FRAME_FACTOR) * FRAME_FACTOR)
    n = min(max(wanted, lo), hi)
    return max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)


def frame_pixel_cap(n_frames: int, params: dict) -> int:
    """Per-frame pixel cap: the configured maximum, lowered so the whole video fits total_pixels."""
    cap = params["max_pixels"]
    if params.get("total_pixels"):
        cap = min(cap, params["total_pixels"] / n_frames * FRAME_FACTOR)
    return int(max(cap, params["min_pixels"] * 1.05))


# ----------------------------------------------------------------------------------------- probe
def probe_video(path: str, timeout: float = 60) -> dict:
    """Stream facts from ffprobe: display size (rotation applied), fps, frame count, duration."""
    import ffmpeg  # ffmpeg-python: argument lists, never a shell string

    if not os.path.exists(path):
        raise FrameError("missing file")
    if os.path.isdir(path):
        raise FrameError("not a file (a directory)")
    if os.path.getsize(path) == 0:
        raise FrameError("empty file (0 bytes)")
    try:
        info = ffmpeg.probe(_ffmpeg_url(path), timeout=timeout)
    except ffmpeg.Error as exc:
        detail = exc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise FrameError(f"not a readable media file ({detail[-1] if detail else 'ffprobe failed'})") from None
    except subprocess.TimeoutExpired:
        raise FrameError(f"timeout: probing took over {timeout:.0f} s") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"
               and not s.get("disposition", {}).get("attached_pic")]
    if not streams:
        raise FrameError("no video stream")
    stream = streams[0]
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        raise FrameError("video stream has no frame size")
    sar = stream.get("sample_aspect_ratio", "1:1")
    try:
        num, den = (int(x) for x in sar.split(":"))
        if num > 0 and den > 0:
            width = max(1, round(width * num / den))
    except ValueError:
        pass
    rotation = _rotation(stream)
    if rotation % 180 == 90:
        width, height = height, width
    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")) or 25.0
    duration = float(stream.get("duration") or info.get("format", {}).get("duration") or 0.0)
    frames = int(stream.get("nb_frames") or 0) or max(1, round(duration * fps))
    return {"width": width, "height": height, "fps": fps, "total_frames": frames, "duration": duration,
            "rotation": rotation, "codec": stream.get("codec_name")}


def _rate(text: str | None) -> float:
    try:
        num, den = (float(x) for x in (text or "0/0").split("/"))
        return num / den if den else 0.0
    except ValueError:
        return 0.0


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    try:
        return int(stream.get("tags", {}).get("rotate", 0)) % 360
    except ValueError:
        return 0


def _ffmpeg_url(path: str) -> str:
    # "file:" stops ffmpeg from reading "a:b.mp4" as protocol "a"; absolute paths defeat leading dashes
    return "file:" + os.path.abspath(path)


# ---------------------------------------------------------------------------------------- decode
def sample_video(path: str, params: dict) -> tuple[np.ndarray, dict]:
    """Sample frames from one video: (uint8 array T x H x W x 3, metadata for the model)."""
    params = {**DEFAULT_FRAMES, **params}
    started = time.monotonic()
    info = probe_video(path, timeout=params["timeout"])
    n = plan_frame_count(info["total_frames"], info["fps"], params)
    indices = np.linspace(0, info["total_frames"] - 1, n).round().astype(int).tolist()
    height, width = smart_resize(info["height"], info["width"], PATCH_FACTOR, params["min_pixels"],
                                 frame_pixel_cap(n, params))
    if params["backend"] == "decord":
        frames, decoded = _decode_decord(path, indices, width, height)
    else:
        frames, decoded = _decode_ffmpeg(path, indices, width, height, params["timeout"])
    notes = []
    if decoded < info["total_frames"]:
        notes.append(f"stream had {decoded} frames, header said {info['total_frames']}")
    if len(set(indices)) < len(indices):
        notes.append(f"short clip: {len(set(indices))} distinct frames repeated to {len(indices)}")
    meta = {
        "fps": info["fps"],  # source fps: with frames_indices it gives each frame's time stamp
        "duration": info["duration"],
        "total_num_frames": info["total_frames"],
        "frames_indices": indices,
        "sampled_frames": len(indices),
        "width": width,
        "height": height,
        "source_width": info["width"],
        "source_height": info["height"],
        "rotation": info["rotation"],
        "backend": params["backend"],
        "notes": notes,
        "seconds": round(time.monotonic() - started, 3),
    }
    return frames, meta


def _decode_ffmpeg(path: str, indices: list[int], width: int, height: int, timeout: float):
    """One decoding pass, scaled inside ffmpeg; keep only the wanted frames (memory: the samples)."""
    import ffmpeg

    wanted: dict[int, list[int]] = {}
    for slot, idx in enumerate(indices):
        wanted.setdefault(idx, []).append(slot)
    process = (
        ffmpeg.input(_ffmpeg_url(path))
        .filter("scale", width, height, flags="bicubic")
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        .global_args("-nostdin", "-loglevel", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    frame_bytes = width * height * 3
    out = np.zeros((len(indices), height, width, 3), np.uint8)
    last = None
    n = 0
    try:
        last_wanted = max(wanted)
        while n <= last_wanted:
            chunk = process.stdout.read(frame_bytes)
            if len(chunk) < frame_bytes:
                break
            if n in wanted:
                frame = np.frombuffer(chunk, np.uint8).reshape(height, width, 3)
                for slot in wanted[n]:
                    out[slot] = frame
            last = chunk
            n += 1
    finally:
        timed_out = not timer.is_alive() and process.poll() is not None and n <= max(wanted)
        timer.cancel()
        process.stdout.close()
        process.kill() if process.poll() is None else None
        process.wait()
        reader.join(timeout=5)
    if n == 0:
        detail = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        if timed_out:
            raise FrameError(f"timeout: decoding took over {timeout:.0f} s")
        raise FrameError(f"decode error: {detail[-1] if detail else 'no frame could be decoded'}")
    if n <= max(wanted):  # stream shorter than its header said: the missing tail repeats the last frame
        frame = np.frombuffer(last, np.uint8).reshape(height, width, 3)
        for idx, slots in wanted.items():
            if idx >= n:
                for slot in slots:
                    out[slot] = frame
    return out, n


def _decode_decord(path: str, indices: list[int], width: int, height: int):
    import decord

    try:
        reader = decord.VideoReader(path, width=width, height=height, num_threads=1)
        total = len(reader)
        batch = reader.get_batch([min(i, total - 1) for i in indices]).asnumpy()
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        raise FrameError(f"decode error (decord): {str(exc).splitlines()[0][:200]}") from None
    return np.ascontiguousarray(batch), total


def load_image(path: str, params: dict) -> tuple[np.ndarray, dict]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    params = {**DEFAULT_FRAMES, **params}
    if not os.path.exists(path):
        raise FrameError("missing file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            height, width = smart_resize(img.height, img.width, PATCH_FACTOR, params["image_min_pixels"],
                                         params["image_max_pixels"])
            array = np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise FrameError(f"not a readable image ({exc})") from None
    return array, {"width": width, "height": height}


# ----------------------------------------------------------------------------------------- cache
def frame_params_key(params: dict) -> str:
    return json.dumps({k: params[k] for k in sorted(params) if k not in ("timeout", "threads", "keep")},
                      sort_keys=True)


def cache_key(path: str, kind: str, params: dict) -> str:
    try:
        st = os.stat(path)
        identity = [path, st.st_size, st.st_mtime_ns]
    except OSError:
        identity = [path, None, None]
    text = json.dumps([kind, identity, frame_params_key(params)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def cached_sample(path: str, kind: str, params: dict, cache_dir: Path) -> dict:
    """Frames of one video/image from the cache, extracting them first if needed; an entry for the manifest."""
    key = cache_key(path, kind, params)
    array_path = cache_dir / key[:2] / f"{key}.npy"
    meta_path = array_path.with_suffix(".json")
    if meta_path.exists() and array_path.exists():  # the sidecar is written last: it marks a complete entry
        meta = read_json(meta_path)
        return {"path": path, "frames": str(array_path), "meta": meta, "cached": True}
    if kind == "video":
        array, meta = sample_video(path, params)
    else:
        array, meta = load_image(path, params)
    with atomic_open(array_path, "wb") as handle:
        np.save(handle, array)
    write_json(meta_path, meta)
    return {"path": path, "frames": str(array_path), "meta": meta, "cached": False}


def load_frames(entry: dict) -> np.ndarray:
    return np.load(entry["frames"], mmap_mode="r")


# ----------------------------------------------------------------------------------------- shard
def extract_shard(shard_path: str, manifest_path: str, settings: dict, threads: int = 1, log=sys.stderr) -> dict:
    """Sample the media of every record in a shard; write a manifest with one entry per record."""
    keys = {**DEFAULT_KEYS, **settings.get("keys", {})}
    params = {**DEFAULT_FRAMES, **settings.get("frames", {})}
    cache_dir = Path(settings["cache_dir"])
    media_root = settings["media_root"]
    records = list(iter_jsonl(shard_path))
    jobs = []  # (record slot, kind, resolved path)
    entries = []
    for slot, record in enumerate(records):
        videos = media_list(record, keys["video"])
        images = media_list(record, keys["image"])
        entry = {"digest": record_digest(record), "videos": [None] * len(videos), "images": [None] * len(images),
                 "error": None}
        if not videos and not images:
            entry["error"] = "no media: empty video and image lists"
        entries.append(entry)
        jobs += [(slot, "video", i, resolve_media(v, media_root)) for i, v in enumerate(videos)]
        jobs += [(slot, "image", i, resolve_media(p, media_root)) for i, p in enumerate(images)]

    done = 0
    started = time.monotonic()
    lock = threading.Lock()

    def run(job):
        nonlocal done
        slot, kind, i, path = job
        try:
            result = cached_sample(path, kind, params, cache_dir)
        except FrameError as exc:
            result = {"path": path, "error": str(exc)}
        except Exception as exc:  # a bug or an exotic file must not sink the other records
            result = {"path": path, "error": f"{type(exc).__name__}: {exc}"}
        with lock:
            done += 1
            rate = done / max(time.monotonic() - started, 1e-6)
            eta = (len(jobs) - done) / rate if rate else 0
            state = "error: " + result["error"] if "error" in result else ("cached" if result["cached"] else "ok")
            print(f"[{done}/{len(jobs)}] {kind} {path}: {state} ({rate:.2f}/s, eta {eta:.0f} s)", file=log,
                  flush=True)
        return job, result

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for (slot, kind, i, _), result in pool.map(run, jobs):
            entries[slot]["videos" if kind == "video" else "images"][i] = result
    for entry in entries:
        failed = [m for m in entry["videos"] + entry["images"] if "error" in m]
        if failed and entry["error"] is None:
            first = failed[0]
            entry["error"] = f"{os.path.basename(first['path'])}: {first['error']}"
    manifest = {"shard": Path(shard_path).stem, "records": entries}
    write_json(manifest_path, manifest, indent=None)
    n_err = sum(1 for e in entries if e["error"])
    print(f"shard {manifest['shard']}: {len(entries)} records, {len(jobs)} media files, {n_err} with errors, "
          f"{time.monotonic() - started:.1f} s", file=log, flush=True)
    return manifest
