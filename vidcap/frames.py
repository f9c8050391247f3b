"""Sampling frames from videos (and loading images) into a per-file cache.

For each video: probe the frames a player shows (time stamps, keyframes; probe.py), choose how many
frames and how large under the token budget (budget.py), take the frames shown at evenly spaced times,
scaled inside the decoder (decode.py), and store them as a uint8 THWC ``.npy`` spool (written as they
are decoded), encoded into the cache file by ``frames.cache_codec`` (vidcap.frame_store), with a JSON
sidecar of metadata and the file's content record. The cache key covers the file's identity (path, size,
mtime) and the frame parameters, so a video moved to another shard, reordered or listed twice is
decoded once, and changing ``frames.*`` re-extracts. ``ensure_frames`` extracts again what was deleted
from the cache. Every failure of a file becomes a readable per-record reason; with ``media_root_only``
a path leaving media_root is one (media_paths.py). A failure of the node (disk full, I/O error, memory,
a first attempt's timeout: vidcap.failures) fails the job instead, so Snakemake retries it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vidcap import budget, decode, frame_store, native_audio, record_budget
from vidcap.atomic import atomic_open, iter_jsonl, read_json, write_json
from vidcap.budget import FRAME_FACTOR
from vidcap.config import FRAMES_RUN_ONLY, defaults, with_defaults
from vidcap.decode import FrameError
from vidcap.failures import raise_if_infra
from vidcap.media_paths import escapes_root
from vidcap.npystream import NpyStream
from vidcap.object_storage import content_identity, is_url
from vidcap.records import media_list, record_digest, resolve_media
from vidcap.result_keys import file_identity

PATCH_FACTOR = budget.QWEN2_PATCH_FACTOR
__all__ = [
    "FRAME_FACTOR",
    "PATCH_FACTOR",
    "FrameError",
    "NpyStream",
    "cached_sample",
    "ensure_frames",
    "extract_frames",
    "load_frames",
    "load_image",
    "sample_video",
    "smart_resize",
]


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = 56 * 56,
    max_pixels: int = PATCH_FACTOR * PATCH_FACTOR * 1280,
) -> tuple[int, int]:
    """Qwen's smart_resize: both sides multiples of ``factor``, pixels within bounds, aspect kept."""
    try:
        return budget.smart_resize(height, width, factor, min_pixels, max_pixels)
    except budget.BudgetError as exc:
        raise FrameError(str(exc)) from None


CACHE_VERSION = 4  # bump when the sampled frames for the same parameters would change


# ---------------------------------------------------------------------------------------- decode
def sample_video(path: str, params: dict, out=None, check=None) -> tuple[np.ndarray, dict]:
    """Sample frames from one video: (uint8 array T x H x W x 3, metadata for the model).

    With ``out`` (an NpyStream) the frames are written to it as they are decoded (by ffmpeg itself
    where it can) and the returned array is None: memory stays at a frame or two, whatever the
    video's length. ``check(info)``, called with the probe, may raise to take the video elsewhere
    (vidcap.long_frames: windows). Frame times come
    from the packets; if the decoder does not output a frame they promised, the times are read from
    the decoder itself (a full decode) and the video is sampled again from those.
    """
    params = with_defaults("frames", params)
    started = time.monotonic()
    deadline = started + float(params["timeout"])
    threads = int(params["decoder_threads"])
    prestart = params["backend"] == "ffmpeg" and os.path.isfile(path)
    # into a cache file, ffmpeg writes the frames itself: they never pass through this process
    sink = out.skip_header() if out and prestart else None
    with decode.Prestarted(path, threads, sink) if prestart else contextlib.nullcontext() as prestarted:
        info = decode.probe(path, deadline)
        if check is not None:
            check(info)
        backend = params["backend"]
        notes = []
        if backend == "decord" and not (info["exact_seek"] and info["timed"] and not info["open_gop"]):
            # decord loses the first GOP(s) of MPEG-TS and other index-less containers, and after a
            # seek it misses open-GOP pictures that reference the GOP before
            backend = "ffmpeg"
            what = "open-GOP streams" if info["open_gop"] else info["format"]
            notes.append(f"decord cannot read {what} exactly: decoded with ffmpeg")
        try:
            return _sample(path, info, params, backend, out, deadline, started, notes, prestarted=prestarted)
        except decode.FrameMismatch as exc:
            if out:
                out.reset()
            if backend == "decord":  # decord sees other frames than a player (edit list, dropped pictures)
                notes.append(f"decord: {exc}: decoded with ffmpeg")
                return _retry(path, info, params, out, deadline, started, notes)
            notes.append(f"{exc}: frame times read from the decoder")
            info = decode.probe(path, deadline, decoded=True)
            return _retry(path, info, params, out, deadline, started, notes)


def _retry(path, info, params, out, deadline, started, notes):
    """Second and last try, with ffmpeg: a frame still missing repeats the one before it."""
    return _sample(path, info, params, "ffmpeg", out, deadline, started, notes, strict=False)


def _sample(path, info, params, backend, out, deadline, started, notes, strict=True, prestarted=None):
    try:
        plan = budget.plan_video(
            info["duration"], info["height"], info["width"], params, source_frames=len(info["times"])
        )
    except budget.BudgetError as exc:
        raise FrameError(str(exc)) from None
    n, height, width = plan["n_frames"], plan["height"], plan["width"]
    targets = decode.sample_times(info["times"], n)
    indices = decode.frames_shown_at(info["times"], targets)
    wanted = sorted(set(indices))
    slots: dict[int, list[int]] = {}
    for slot, idx in enumerate(indices):
        slots.setdefault(idx, []).append(slot)
    array = None if out else np.empty((n, height, width, 3), np.uint8)
    # ffmpeg cannot repeat a frame nor stand in for a missing one
    direct = bool(out and out.direct) and strict and backend == "ffmpeg" and len(wanted) == n
    if out:
        out.start((n, height, width, 3), direct)
    if prestarted and prestarted.sink and not direct:
        prestarted = None  # it writes into the file
    last = {"idx": -1}

    def deliver(idx: int, frame):  # called in increasing idx order, which is slot order
        if idx <= last["idx"]:
            raise RuntimeError(f"frame {idx} delivered after frame {last['idx']}")
        if frame is None:  # decoder ended early: repeat the last frame it gave
            frame = last["frame"]
        for slot in slots[idx]:
            if out:
                out.write(frame)
            else:
                array[slot] = frame
        last.update(idx=idx, frame=frame)

    threads = int(params["decoder_threads"])
    if backend == "decord":
        stats = decode.decode_decord(path, info, wanted, width, height, deliver, deadline, threads)
    else:
        sink = out.handle if direct else None
        stats = decode.decode_ffmpeg(
            path, info, wanted, width, height, deliver, deadline, threads, strict, prestarted, sink
        )
        if direct:
            out.advance(len(wanted))  # strict: every wanted frame came, or FrameMismatch
    notes = notes + plan["notes"] + stats["warnings"]
    if len(wanted) < n:
        notes.append(f"short clip: {len(wanted)} distinct frames repeated to {n}")
    meta = _video_meta(info, plan, indices, backend, stats, notes)
    meta["seconds"] = round(time.monotonic() - started, 3)
    return array, meta


def _video_meta(info: dict, plan: dict, indices: list[int], backend: str, stats: dict, notes: list) -> dict:
    times = info["times"]
    return {
        # fps, duration, total_num_frames and frames_indices are what the model's processor reads:
        # frames_indices / fps gives each frame's time stamp (exact for constant frame rate)
        "fps": info["fps"],
        "duration": info["duration"],
        "total_num_frames": len(times),
        "frames_indices": indices,
        "timestamps": [round(times[i] - times[0], 6) for i in indices],  # exact, also for variable fps
        "sampled_frames": plan["n_frames"],
        "distinct_frames": len(set(indices)),
        "repeated_frames": plan["n_frames"] - len(set(indices)),
        "sample_fps": plan["sample_fps"],
        "width": plan["width"],
        "height": plan["height"],
        "vision_tokens": plan["vision_tokens"],
        "budget_tokens": plan["budget_tokens"],
        "patch_factor": plan["patch_factor"],
        "source_width": info["width"],
        "source_height": info["height"],
        "rotation": info["rotation"],
        "vfr": info["vfr"],
        "codec": info["codec"],
        "pix_fmt": info["pix_fmt"],
        "backend": backend,
        "frame_times": info["frame_source"],
        "probe": info["reader"],  # pyav (in-process) or ffprobe
        "decode_runs": stats["runs"],
        "decoded_frames": stats["decoded_frames"],
        "notes": notes,
    }


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_image(path: str, params: dict) -> tuple[np.ndarray, dict]:
    """One image as uint8 H x W x 3, EXIF orientation applied, sized by the image pixel bounds."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    params = with_defaults("frames", params)
    if not os.path.exists(path):
        raise FrameError("missing file")
    if os.path.isdir(path):
        raise FrameError("not a file (a directory)")
    factor = int(params.get("patch_factor") or PATCH_FACTOR)
    try:
        with Image.open(path) as img:
            fmt = img.format
            img = ImageOps.exif_transpose(img).convert("RGB")
            height, width = smart_resize(
                img.height, img.width, factor, params["image_min_pixels"], params["image_max_pixels"]
            )
            array = np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.uint8)
            source = (img.width, img.height)
    except UnidentifiedImageError:
        raise FrameError("not an image file (unrecognised format)") from None
    except OSError as exc:
        raise FrameError(f"image decode error ({exc})") from None
    return array, {
        "width": width,
        "height": height,
        "source_width": source[0],
        "source_height": source[1],
        "format": fmt,
        "vision_tokens": (height // factor) * (width // factor),
    }


# ----------------------------------------------------------------------------------------- cache
def frame_params_key(params: dict) -> str:
    # change how, not what, is extracted (prompt_tokens is already in max_vision_tokens)
    # the storage codec only where it changes the pixels (lossless ones share raw frames' keys and results)
    ignored = ("timeout", "threads", "keep", "decoder_threads", "prompt_tokens", "cache_codec")
    key = {k: params[k] for k in sorted(params) if k not in ignored}
    tag = frame_store.key_tag(params.get("cache_codec", "npy"))
    if tag:
        key["cache_codec"] = tag
    return json.dumps(key, sort_keys=True)


def cache_key(path: str, kind: str, params: dict, identity: list | None = None) -> str:
    """``identity``: what the file is when its stat says nothing (a staged copy of an object-storage URL)."""
    if identity is None:
        identity = file_identity(path)
    text = json.dumps([CACHE_VERSION, kind, identity, frame_params_key(params)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def cached_sample(
    path: str, kind: str, params: dict, cache_dir: Path, check=None, identity: list | None = None
) -> dict:
    """Frames of one video/image from the cache (extracted first if missing); its manifest entry.
    ``check``: see :func:`sample_video`; ``identity``: see :func:`cache_key`."""
    params = with_defaults("frames", params)
    codec = params["cache_codec"]
    key = cache_key(path, kind, params, identity)
    array_path = Path(cache_dir) / key[:2] / f"{key}{frame_store.suffix(codec)}"
    meta_path = array_path.with_suffix(".json")
    cached = read_sidecar(meta_path, array_path)
    if cached is not None:
        return {"path": path, "frames": str(array_path), **cached, "cached": True}
    # not fsynced: a cache entry can be made again, and fsync of a video's frames cost about a tenth
    # of a 10 s clip's extraction; after a power loss a torn or zero-filled file fails its content
    # record and is seen as missing (read_sidecar, ensure_frames). The manifest, the job's output, stays durable.
    if kind == "video" and codec != "npy":  # a raw spool as before, then encoded (ffmpeg reads the spool)
        with _spool(array_path) as spool:
            meta, shape = _sample_into(spool, path, params, check)
            content = frame_store.encode_spool(spool, array_path, codec)
    elif kind == "video":
        meta, shape = _sample_into(array_path, path, params, check)
        content = frame_store.content_record(array_path, codec, shape)
    else:
        array, meta = load_image(path, params)
        content = frame_store.encode_array(array, array_path, codec)
    write_json(
        meta_path, {"format": frame_store.FORMAT_VERSION, "meta": meta, "content": content}, durable=False
    )
    return {"path": path, "frames": str(array_path), "meta": meta, "content": content, "cached": False}


def _sample_into(target: Path, path: str, params: dict, check) -> tuple[dict, tuple]:
    with atomic_open(target, "wb", durable=False) as handle:  # a failed extraction leaves no file
        stream = NpyStream(handle)
        _, meta = sample_video(path, params, out=stream, check=check)
        stream.finish()
    return meta, stream.shape


@contextlib.contextmanager
def _spool(array_path: Path):
    """A raw spool beside the entry, named like atomic's temp files (``.*.tmp``: cache prune removes
    those a killed job left), deleted once encoded."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{array_path.stem}.spool.", suffix=".tmp", dir=array_path.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def read_sidecar(meta_path: Path, array_path: Path) -> dict | None:
    """``{"meta", "content"}`` of a complete, intact cache entry, else None (missing, torn, zero-filled,
    written by another codec or by cache version 4, whose sidecar was the plain metadata)."""
    try:
        sidecar = read_json(meta_path)
    except (OSError, ValueError):  # missing, or cut short by a power loss
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != frame_store.FORMAT_VERSION:
        return None
    content = sidecar.get("content") or {}
    if (
        content.get("codec") not in frame_store.CODECS
        or frame_store.suffix(content["codec"]) != array_path.suffix
    ):
        return None
    if not frame_store.is_intact(array_path, content):
        return None
    return {"meta": sidecar["meta"], "content": content}


def sidecar_meta(meta_path: Path) -> dict | None:
    """The metadata of a cache entry's sidecar (any codec), without checking its frames; else None."""
    try:
        sidecar = read_json(meta_path)
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != frame_store.FORMAT_VERSION:
        return None
    return sidecar["meta"]


def disk_usage(folder: str | os.PathLike) -> tuple[int, int]:
    """Files and bytes under ``folder`` (the frame cache), reported at the end of a build."""
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return files, size


def load_frames(entry: dict) -> np.ndarray:
    """An entry's frames (uint8 T x H x W x 3, or H x W x 3): raw ones memory-mapped, compact ones decoded."""
    return frame_store.read(entry["frames"], entry.get("content"))


def entry_intact(entry: dict) -> bool:
    """The entry's frame file is there and is what its content record says."""
    return frame_store.is_intact(entry["frames"], entry.get("content"))


def ensure_frames(entry: dict, settings: dict) -> dict:
    """A manifest record entry whose frame files all exist, for the caption job to call first.

    Media whose cached frames are gone (the cache deleted, frames.keep true) are extracted again with
    the frames step's ``settings`` (cache_dir, frames); a file that can no longer be extracted (deleted
    or broken since) becomes that item's and the record's error instead of a FileNotFoundError.
    Updates ``entry`` in place and returns it.
    """
    params = with_defaults("frames", settings.get("frames"))
    for field, kind in (("videos", "video"), ("images", "image")):
        for i, item in enumerate(entry.get(field) or []):
            if not item or "error" in item or "windows" in item or entry_intact(item):
                continue
            # a video capped by its record's budget (vidcap.record_budget) is extracted again at its cap
            cap = (item.get("meta") or {}).get("budget_tokens") if kind == "video" else None
            try:
                entry[field][i] = cached_sample(
                    item["path"], kind, record_budget.with_cap(params, cap), Path(settings["cache_dir"])
                )
            except FrameError as exc:
                raise_if_infra(exc, f"{kind} {item['path']}", settings.get("attempt", 1))
                entry[field][i] = {"path": item["path"], "error": str(exc)}
                entry["error"] = entry.get("error") or f"{os.path.basename(item['path'])}: {exc}"
    return entry


# ----------------------------------------------------------------------------------------- shard
def _staged_copy(path: str, staged: dict[str, str]) -> tuple[str, list | None]:
    """The file to decode for ``path`` and its cache identity (None: the file's own stat)."""
    if not is_url(path):
        return path, None
    if path not in staged:  # not in the bucket (the DAG leaves missing objects out, object_storage.existing)
        raise FrameError("missing file")
    return staged[path], content_identity(path, staged[path])


def plan_shard_media(records, keys: dict, settings: dict) -> tuple[list[dict], dict]:
    """One manifest entry per record (media slots still empty) and the distinct media files to extract:
    {(kind, resolved path): [(record slot, "videos"|"images", index), ...]}."""
    only = settings.get("media_root_only", defaults()["media_root_only"])
    wanted: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    entries = []
    for slot, record in enumerate(records):
        videos = media_list(record, keys["video"])
        images = media_list(record, keys["image"])
        entry = {
            "digest": record_digest(record),
            "videos": [None] * len(videos),
            "images": [None] * len(images),
        }
        entry["error"] = None if videos or images else "no media: empty video and image lists"
        entries.append(entry)
        for field, kind, items in (("videos", "video", videos), ("images", "image", images)):
            for i, item in enumerate(items):
                escape = escapes_root(item) if only else None
                if escape:  # never opened: the record fails, the others go on
                    entry[field][i] = {"path": item, "error": f"refused by media_root_only: {escape}"}
                    continue
                wanted.setdefault((kind, resolve_media(item, settings["media_root"])), []).append(
                    (slot, field, i)
                )
    return entries, wanted


def _probe_or_none(params: dict):
    """A probe for planning record budgets: None when the file fails (the frames step says why later)."""

    def probe(path: str) -> dict | None:
        try:
            return decode.probe(path, time.monotonic() + float(params["timeout"]))
        except Exception:  # noqa: BLE001 -- its extraction fails with the reason, or the node's error
            return None

    return probe


def media_label(kind: str, result: dict) -> str:
    """What a log line calls a media job: a "long" job is any video alone in its record (checked for
    windows), so it says "video", and how many windows when it turned out long."""
    if kind != "long":
        return kind
    windows = result.get("windows")
    return f"video ({len(windows)} windows)" if windows else "video"


def decode_split(booked: int, decoder_threads: int) -> tuple[int, int]:
    """(videos decoded at once, threads per decode) within the ``booked`` cores of the job.

    ``decoder_threads`` 0 (the decoder's choice) would give every ffmpeg a thread per core of the node,
    with several decodes per job: one thread each, as many decodes as cores booked. The rule books
    frames.threads x max(1, frames.decoder_threads) cores (vidcap.settings.frames_job_threads).
    """
    booked = max(1, booked)
    per_decode = min(max(1, decoder_threads), booked)
    return max(1, booked // per_decode), per_decode


def staged_urls(shard_path: str, settings: dict) -> list[str]:
    """The object-storage URLs a shard's frames job opens: Snakemake retrieves them before it starts."""
    keys = with_defaults("keys", settings.get("keys"))
    _, wanted = plan_shard_media(iter_jsonl(shard_path), keys, settings)
    return sorted({path for _, path in wanted if is_url(path)})


def extract_frames(
    shard_path: str,
    manifest_path: str,
    settings: dict,
    threads: int = 1,
    log=sys.stderr,
    attempt: int = 1,
    run: dict | None = None,
    staged: dict[str, str] | None = None,
) -> dict:
    """Sample the media of every record in a shard; write a manifest with one entry per record.

    A pool of workers goes over the distinct media files (a file listed twice is extracted once), their
    ffmpeg threads together within the ``threads`` cores the job booked (:func:`decode_split`); each
    worker mostly waits on an ffmpeg process, so threads are enough. A failure of
    the node raises :class:`vidcap.failures.InfraError` and writes no manifest (``attempt``: Snakemake's,
    which decides whether a timeout is the node's or the video's). ``run``: the config's ``frames``
    section, whose run-only settings (vidcap.config.FRAMES_RUN_ONLY: not in the rule's params, so a change
    reruns nothing) apply to this job. ``staged``: {URL: local copy} of the shard's media on object
    storage (:func:`staged_urls`); the manifest names the URL.
    """
    staged = staged or {}
    keys = with_defaults("keys", settings.get("keys"))
    params = with_defaults("frames", settings.get("frames"))
    params.update({k: run[k] for k in FRAMES_RUN_ONLY if k in (run or {})})
    decodes, params["decoder_threads"] = decode_split(threads, int(params["decoder_threads"]))
    cache_dir = Path(settings["cache_dir"])
    cache_dir.mkdir(parents=True, exist_ok=True)  # may be this shard's own output folder (frames.keep false)
    entries, wanted = plan_shard_media(iter_jsonl(shard_path), keys, settings)
    long_video = settings.get("long_video")
    if long_video:  # imported here: long_frames builds on this module
        from vidcap import long_frames

        wanted = long_frames.split_long(entries, wanted, long_video)
    # one token budget per record, split among its media before anything is decoded
    wanted = record_budget.assign_caps(entries, wanted, params, _probe_or_none(params), threads)
    jobs = list(wanted)
    done = 0
    started = time.monotonic()
    lock = threading.Lock()

    def run(job):
        nonlocal done
        kind, path, cap = job
        try:
            local, identity = _staged_copy(path, staged)
            if kind == "long":  # a video alone in its record: windowed if long_video says so
                result = long_frames.cached_long(local, params, long_video, cache_dir, identity)
            else:
                result = cached_sample(
                    local, kind, record_budget.with_cap(params, cap), cache_dir, identity=identity
                )
            result["path"] = path
        except Exception as exc:  # noqa: BLE001 -- a bug or an exotic file must not sink the other records
            raise_if_infra(exc, f"{kind} {path}", attempt)
            reason = str(exc) if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
            result = {"path": path, "error": reason}
        with lock:
            done += 1
            rate = done / max(time.monotonic() - started, 1e-6)
            eta = (len(jobs) - done) / rate if rate else 0
            state = (
                "error: " + result["error"] if "error" in result else ("cached" if result["cached"] else "ok")
            )
            print(
                f"[{done}/{len(jobs)}] {media_label(kind, result)} {path}: {state} ({rate:.2f}/s, eta {eta:.0f} s)",
                file=log,
                flush=True,
            )
        return job, result

    with ThreadPoolExecutor(max_workers=decodes) as pool:
        for job, result in pool.map(run, jobs):
            for slot, field, i in wanted[job]:
                entries[slot][field][i] = result
    if native_audio.is_native(settings):  # each video's (or window's) audio beside its frames
        native_audio.attach_all(entries, staged)
    for entry in entries:
        failed = [m for m in entry["videos"] + entry["images"] if "error" in m]
        if failed and entry["error"] is None:
            first = failed[0]
            entry["error"] = f"{os.path.basename(first['path'])}: {first['error']}"
    manifest = {"shard": Path(shard_path).stem, "records": entries}
    write_json(manifest_path, manifest, indent=None)
    n_err = sum(1 for e in entries if e["error"])
    print(
        f"shard {manifest['shard']}: {len(entries)} records, {len(jobs)} media files, {n_err} with errors, "
        f"{time.monotonic() - started:.1f} s",
        file=log,
        flush=True,
    )
    return manifest
