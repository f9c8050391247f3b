"""Frames of a long video in windows, with shot cuts found in the same decoding pass.

Sampling 2 fps from a 30 fps source decodes nearly every frame anyway, so a separate shot detector
(PySceneDetect, a second ffmpeg) would cost a second full decode. Here one ffmpeg decodes the video
once and splits it: one branch keeps the frames on a regular grid at ``frames.fps`` (scaled to the
size the budget gives one nominal window), the other is scaled to 64 pixels wide and goes through
``select='gt(scene,T)'`` + ``metadata=print:file=...``, which writes the time of every cut. Once the
pass has ended, windows are planned (vidcap.windows) and each window's frames are copied out of the
grid spool into a cache file of its own, sized by the budget for that window (fewer frames when a
window moved to a cut is longer than nominal; the frame size is the nominal window's for all).

A windowed video's manifest item is ``{"path", "meta", "windows": [{"start", "end", "frames", "meta"}
| {"start", "end", "error"}]}`` (no "frames" key of its own). A window none of whose frames decode
(a truncated tail) is that window's error; the video fails only when nothing decodes at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import ffmpeg
import numpy as np

from vidcap import budget, decode, frame_store, windows
from vidcap.atomic import atomic_open, read_json, write_json
from vidcap.config import with_defaults
from vidcap.decode import FrameError
from vidcap.frames import _video_meta, cache_key, cached_sample, sidecar_meta
from vidcap.npystream import NpyStream
from vidcap.probe import Truncated

SCENE_THRESHOLD = 0.3  # ffmpeg scene score (0..1) from which a frame starts a new shot
SCENE_WIDTH = 64  # pixels: enough to see a cut, nearly free to scale to and compare
WINDOW_KEYS = ("mode", "window_frames", "min_window_frames", "shots")


def split_long(entries: list[dict], wanted: dict, long_video: dict | None) -> dict:
    """Move the videos of one-video records (no images) to ("long", path) jobs; others stay as they are.

    Records with several videos or images keep today's single prompt (one request per record).
    """
    if not long_video or long_video["mode"] == "single":
        return wanted
    out: dict = {}
    for (kind, path), refs in wanted.items():
        alone = [r for r in refs if kind == "video" and _one_video(entries[r[0]])]
        rest = [r for r in refs if r not in alone]
        if alone:
            out[("long", path)] = alone
        if rest:
            out[(kind, path)] = rest
    return out


def _one_video(entry: dict) -> bool:
    return len(entry["videos"]) == 1 and not entry["images"]


class LongVideo(Exception):
    """Raised from inside the single-prompt sampler once its probe shows a long video (mode auto)."""

    def __init__(self, info: dict):
        super().__init__("long video")
        self.info = info


def cached_long(
    path: str, params: dict, long_video: dict, cache_dir: Path, identity: list | None = None
) -> dict:
    """A video's manifest item: windowed when ``long_video`` says so, else exactly :func:`cached_sample`'s
    (``identity``: see :func:`vidcap.frames.cache_key`)."""
    params = with_defaults("frames", params)
    lv = {k: long_video[k] for k in WINDOW_KEYS}
    key = cache_key(path, "long", {**params, "long_video": lv}, identity)
    item_path = Path(cache_dir) / key[:2] / f"{key}.json"
    if item_path.exists():
        item = read_json(item_path)
        if all(
            frame_store.is_intact(w["frames"], w.get("content")) for w in item["windows"] if "frames" in w
        ):
            return {**item, "cached": True}
    deadline = time.monotonic() + float(params["timeout"])
    info = None
    if lv["mode"] == "auto":
        try:
            return _single_unless_long(path, params, lv["window_frames"], cache_dir, identity)
        except LongVideo as exc:
            info = exc.info
        except Truncated:  # windows caption what is left of a long one; a short one fails as today
            info = decode.probe(path, deadline, truncated_ok=True)
            if not windows.is_long(full_duration(info), params["fps"], lv["window_frames"]):
                raise
    if info is None:
        info = decode.probe(path, deadline, truncated_ok=True)  # a truncated tail fails its windows only
    item = sample_windows(path, info, params, lv, Path(cache_dir), key, deadline)
    write_json(item_path, item)
    return {**item, "cached": False}


def _single_unless_long(
    path: str, params: dict, window_frames: int, cache_dir: Path, identity: list | None = None
) -> dict:
    """Today's single-prompt sampling, with its own probe (no second one: a short clip costs what it did);
    raises LongVideo as soon as that probe (or a cache entry) shows more than one window."""
    key = cache_key(path, "video", params, identity)
    meta = sidecar_meta(Path(cache_dir) / key[:2] / f"{key}.json")
    # extracted before, e.g. with mode single: its duration decides
    if meta is not None and windows.is_long(meta["duration"], params["fps"], window_frames):
        raise LongVideo(decode.probe(path, time.monotonic() + float(params["timeout"]), truncated_ok=True))

    def check(info: dict) -> None:
        if windows.is_long(info["duration"], params["fps"], window_frames):
            raise LongVideo(info)

    return cached_sample(path, "video", params, cache_dir, check=check, identity=identity)


def full_duration(info: dict) -> float:
    """The declared length of a truncated file (its lost tail is planned, and fails), else the duration."""
    return info.get("declared_duration") or info["duration"]


def sample_windows(
    path: str, info: dict, params: dict, lv: dict, cache_dir: Path, key: str, deadline
) -> dict:
    """Decode once (grid frames + cuts), plan windows, write each window's frames; the manifest item."""
    started = time.monotonic()
    fps, span = float(params["fps"]), windows.window_seconds(params["fps"], lv["window_frames"])
    nominal = _nominal_plan(info, params, span)
    height, width = nominal["height"], nominal["width"]
    times, duration = info["times"], full_duration(info)
    grid = [times[0] + k / fps for k in range(max(2, int(duration * fps)))]
    folder = cache_dir / key[:2]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{key}-") as tmp:
        spool = Path(tmp) / "grid.npy"
        decoded = _decode_grid(path, info, grid, width, height, spool, lv["shots"], Path(tmp), deadline)
        spans = windows.plan_windows(
            duration, fps, lv["window_frames"], lv["min_window_frames"], decoded["cuts"], lv["shots"]
        )
        with GridReader(spool) as frames:
            items = [
                _window_item(i, span_, grid, decoded, frames, info, params, (height, width), folder, key)
                for i, span_ in enumerate(spans)
            ]
    if all("error" in w for w in items):
        raise FrameError(items[0]["error"])
    meta = {
        "duration": duration,
        "decodable_duration": info["duration"],
        "fps": info["fps"],
        "source_width": info["width"],
        "source_height": info["height"],
        "width": width,
        "height": height,
        "sample_fps": fps,
        "grid_frames": len(grid),
        "shots": lv["shots"],
        "cuts": [round(c, 3) for c in decoded["cuts"]],
        "decoded_frames": decoded["got"],
        "notes": decoded["notes"] + nominal["notes"],
        "seconds": round(time.monotonic() - started, 3),
    }
    return {"path": path, "meta": meta, "windows": items}


class GridReader:
    """Rows of the grid spool read with pread: a memory map would count the whole spool (a GB for 10 minutes
    at the defaults) in the job's resident memory while the windows are copied out."""

    def __init__(self, path: Path):
        with open(path, "rb") as handle:
            np.lib.format.read_magic(handle)
            shape, _, _ = np.lib.format.read_array_header_1_0(handle)
            self.offset = handle.tell()
        self.frame_shape = tuple(shape[1:])
        self.frame_bytes = int(np.prod(self.frame_shape))
        self.fd = os.open(path, os.O_RDONLY)

    def row(self, i: int) -> np.ndarray:
        data = os.pread(self.fd, self.frame_bytes, self.offset + i * self.frame_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.frame_shape)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _nominal_plan(info: dict, params: dict, span: float) -> dict:
    source = sum(1 for t in info["times"] if t - info["times"][0] < span)
    try:
        return budget.plan_video(span, info["height"], info["width"], params, source_frames=source)
    except budget.BudgetError as exc:
        raise FrameError(str(exc)) from None


def _decode_grid(path, info, grid, width, height, spool, shots, tmp, deadline) -> dict:
    """One ffmpeg pass: the frames shown at the ``grid`` times into ``spool``, and the shot cuts.

    Grid times past the last frame of a truncated file (probed with truncated_ok) are missing (``valid``
    False). When the decoder gives fewer frames than the packets promised, the frame times are read from
    the decoder and the pass runs again once.
    """
    indices = decode.frames_shown_at(info["times"], grid)
    end = info["times"][-1] + 1.5 / max(info["fps"], 1e-6)
    valid = [t <= end for t in grid]  # past the end of a truncated file: nothing to decode
    notes = [] if all(valid) else [f"truncated file: frames end at {info['duration']:.2f} s"]
    got, cuts, stderr = _one_pass(path, info, indices, width, height, spool, shots, tmp, deadline)
    if got < len(set(indices)):
        notes.append(f"decoder gave {got} of {len(set(indices))} frames: frame times read from the decoder")
        decoded = decode.probe(path, deadline, decoded=True)
        end = decoded["times"][-1] + 1.5 / max(decoded["fps"], 1e-6)
        valid = [t <= end for t in grid]
        indices = decode.frames_shown_at(decoded["times"], [min(t, end) for t in grid])
        got, cuts, stderr = _one_pass(path, decoded, indices, width, height, spool, shots, tmp, deadline)
        info = decoded
        if got < len(set(indices)):
            raise FrameError(f"decode error: {decode.last_line(stderr, 'decoder ended early', first=True)}")
    return {"indices": indices, "valid": valid, "cuts": cuts, "got": got, "notes": notes, "info": info}


def _one_pass(path, info, indices, width, height, spool, shots, tmp, deadline):
    """(distinct frames written, cut times relative to the first frame, ffmpeg's stderr)."""
    wanted = sorted(set(indices))
    slots: dict[int, int] = {}
    for idx in indices:
        slots[idx] = slots.get(idx, 0) + 1
    cuts_file = Path(tmp) / "cuts.txt"
    cuts_file.unlink(missing_ok=True)
    cmd = grid_command(path, info, wanted, width, height, cuts_file if shots else None)
    with open(spool, "wb") as handle:
        out = NpyStream(handle).start((len(indices), height, width, 3))
        process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        last = None

        def deliver(idx, frame):
            nonlocal last
            last = frame
            for _ in range(slots[idx]):
                out.write(frame)

        got, stderr = _read_all(process, wanted, width, height, deliver, deadline)
        for idx in wanted[got:]:  # missing at the end: repeated last frame, marked invalid by the caller
            for _ in range(slots[idx]):
                out.write(last if last is not None else np.zeros((height, width, 3), np.uint8))
    if got == 0:
        raise FrameError(f"decode error: {decode.last_line(stderr, 'no frame could be decoded', first=True)}")
    cuts = parse_cuts(cuts_file, info["times"][0]) if shots else []
    return got, cuts, stderr


def grid_command(path, info, wanted, width, height, cuts_file: Path | None) -> list[str]:
    """ffmpeg's argument list: the wanted frames as raw RGB on stdout; with ``cuts_file``, a split
    branch at SCENE_WIDTH pixels writes every frame whose scene score passes the threshold."""
    stream = decode.ffmpeg_input(path, 0)[str(info["stream_index"])]
    if cuts_file is None:
        picked = decode.pick_filters(stream, info, wanted, width, height)
        outputs = [_raw_output(picked, wanted)]
    else:
        branches = stream.filter_multi_output("split")
        picked = decode.pick_filters(branches[0], info, wanted, width, height)
        scene = (
            branches[1]
            .filter("scale", SCENE_WIDTH, -2, flags="fast_bilinear")
            .filter("select", f"gt(scene,{SCENE_THRESHOLD})")
            .filter("metadata", mode="print", file=str(cuts_file))
        )
        outputs = [_raw_output(picked, wanted), ffmpeg.output(scene, "-", format="null")]
    return ffmpeg.merge_outputs(*outputs).compile(cmd=decode.FFMPEG)


def _raw_output(stream, wanted):
    return ffmpeg.output(
        stream, "pipe:", format="rawvideo", fps_mode="passthrough", **{"frames:v": len(wanted)}
    )


def parse_cuts(cuts_file: Path, first_time: float) -> list[float]:
    """Cut times (seconds from the first frame) from metadata=print's lines ``frame:N pts:P pts_time:T``."""
    if not cuts_file.exists():
        return []
    text = cuts_file.read_text(encoding="utf-8", errors="replace")
    stamps = [float(m) for m in re.findall(r"pts_time:([-\d.]+)", text)]
    return sorted({round(t - first_time, 6) for t in stamps if t - first_time > 0})


def _read_all(process, wanted, width, height, deliver, deadline):
    """Read the frames as they arrive, then let ffmpeg finish (the scene branch runs to the end)."""
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    timer = threading.Timer(max(deadline - time.monotonic(), 0), process.kill)
    timer.start()
    try:
        got = decode.read_frames(process.stdout, wanted, width, height, deliver)
        process.stdout.read()  # nothing more is expected; drains until the scene branch ends
        process.wait()
    finally:
        expired = (
            not timer.is_alive() and process.returncode not in (0, None) and time.monotonic() >= deadline
        )
        timer.cancel()
        with contextlib.suppress(OSError):
            process.stdout.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    if expired:
        raise FrameError("timeout: decoding not finished within the per-video limit")
    return got, b"".join(errors).decode("utf-8", "replace")


def _window_item(i, span, grid, decoded, frames, info, params, size, folder, key) -> dict:
    """One window's cache entry: its rows of the grid, thinned to its own budget, in a file of its own."""
    start, end = span
    t0 = info["times"][0]
    rows = [r for r, t in enumerate(grid) if start - 1e-6 <= t - t0 < end - 1e-6]
    good = [r for r in rows if decoded["valid"][r]]
    if not good:
        return {"start": start, "end": end, "error": f"no decodable frames from {start:.1f} s to {end:.1f} s"}
    height, width = size
    n = window_frame_count(end - start, len(good), info, params, size)
    keep = [good[k] for k in np.linspace(0, len(good) - 1, n).round().astype(int)]
    codec = params["cache_codec"]
    path = folder / f"{key}-w{i:03d}{frame_store.suffix(codec)}"
    spool = path if codec == "npy" else folder / f".{key}-w{i:03d}.spool.tmp"
    try:
        with atomic_open(spool, "wb", durable=False) as handle:
            out = NpyStream(handle).start((len(keep), height, width, 3))
            for row in keep:
                out.write(frames.row(row))
            out.finish()
        if codec == "npy":
            content = frame_store.content_record(path, codec, out.shape)
        else:
            content = frame_store.encode_spool(spool, path, codec)
    finally:
        if spool != path:
            spool.unlink(missing_ok=True)
    indices = [decoded["indices"][r] for r in keep]
    factor = int(params.get("patch_factor") or budget.QWEN2_PATCH_FACTOR)
    plan = {
        "n_frames": len(keep),
        "sample_fps": len(keep) / (end - start) if end > start else None,
        "width": width,
        "height": height,
        "vision_tokens": budget.vision_tokens(len(keep), height, width, factor),
        "budget_tokens": params.get("max_vision_tokens"),
        "patch_factor": factor,
    }
    notes = [] if len(good) == len(rows) else [f"{len(rows) - len(good)} of {len(rows)} frames not decodable"]
    stats = {"runs": 1, "decoded_frames": decoded["got"], "warnings": []}
    meta = _video_meta(decoded["info"], plan, indices, "ffmpeg", stats, notes)
    meta.update(window_span(decoded["info"]["times"], start, end))
    return {"start": start, "end": end, "frames": str(path), "meta": meta, "content": content}


def window_span(times: list[float], start: float, end: float) -> dict:
    """A window's source frames and length, in place of the whole video's.

    Qwen2.5-VL derives its temporal step from len(frames_indices) / total_num_frames x fps (the sampling
    rate), so total_num_frames must count the window's source frames; frames_indices stay absolute, so
    Qwen3-VL's time stamps (frames_indices / fps) are the true times in the video.
    """
    t0 = times[0]
    inside = sum(1 for t in times if start - 1e-6 <= t - t0 < end - 1e-6)
    return {"total_num_frames": max(inside, 1), "duration": round(end - start, 6), "window_start": start}


def window_frame_count(seconds: float, available: int, info: dict, params: dict, size: tuple) -> int:
    """Frames one window sends: the budget's count for its length, fewer if they do not fit at ``size``."""
    height, width = size
    factor = int(params.get("patch_factor") or budget.QWEN2_PATCH_FACTOR)
    n = budget.even_floor(min(max(seconds * params["fps"], params["min_frames"]), params["max_frames"]))
    lo = budget.even_floor(params["min_frames"])
    n = min(n, max(lo, budget.even_floor(available)))  # no frame sent twice beyond the min_frames pad
    limit = params.get("max_vision_tokens")
    if limit is not None:
        per_pair = budget.vision_tokens(budget.FRAME_FACTOR, height, width, factor)
        n = min(n, budget.even_floor(limit // per_pair * budget.FRAME_FACTOR))
    return max(budget.FRAME_FACTOR, n)
