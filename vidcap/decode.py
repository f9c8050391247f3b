"""Decoding the frames shown at given times, with ffmpeg (subprocess) or decord.

``probe`` reads the stream facts and every packet's presentation time and keyframe flag (demuxing
only, no decoding), so sampling works on time stamps: the frame taken for time t is the last frame
whose time stamp is <= t, which stays right for variable frame rate. ``plan_runs`` groups the wanted
frames into decode runs: a run starts at a seek (to the keyframe before its first frame) and decodes
forward; a new run starts only when a keyframe lies well past the current position, so dense sampling
is one decoding pass and sparse sampling skips whole GOPs. In ffmpeg, the select filter drops unwanted
frames right after decoding; only the wanted ones are rotated, scaled (libswscale, pixel aspect
applied) and converted to RGB, and each is handed over as it arrives. ffmpeg's fps= filter is not
used: it takes the frame after each time stamp. Every failure raises FrameError with a readable reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from bisect import bisect_right

import numpy as np

SEEK_COST_FRAMES = 48  # a new seek (process start, demuxer seek) costs about this many decoded frames
# containers with a sample index, where a seek lands on the keyframe asked for; others (MPEG-TS/PS,
# raw streams) seek by byte position and may land late, so they are always read from the start
EXACT_SEEK_FORMATS = ("mov", "mp4", "matroska", "webm")


class FrameError(Exception):
    """A video or image cannot be used; the message is the record's error reason."""


def _last_line(text: str | bytes, default: str, first: bool = False) -> str:
    """One readable line of ffmpeg's stderr: "[h264 @ 0x55..] msg" becomes "h264: msg", paths dropped.

    ``first``: the first line that names a component (the decoder's own complaint comes first;
    the last lines are consequences such as "Error marking filters as finished").
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = []
    for line in text.strip().splitlines():
        line = re.sub(r"^\[(\w[\w,]*) @ 0x[0-9a-f]+\] ", r"\1: ", line.strip())
        line = re.sub(r"^file:\S*?: ", "", line)
        if line:
            lines.append(line)
    if not lines:
        return default
    named = [line for line in lines if re.match(r"^\w[\w,]*: ", line)]
    return ((named or lines)[0] if first else lines[-1])[:300]


def ffmpeg_url(path: str) -> str:
    # "file:" stops ffmpeg from reading "a:b.mp4" as protocol "a"; absolute paths defeat leading dashes
    return "file:" + os.path.abspath(path)


def _run(cmd: list[str], deadline: float, what: str) -> subprocess.CompletedProcess:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FrameError(f"timeout: {what} not finished within the per-video limit")
    try:
        return subprocess.run(
            cmd, capture_output=True, timeout=remaining, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise FrameError(f"timeout: {what} not finished within the per-video limit") from None


# ----------------------------------------------------------------------------------------- probe
def probe(path: str, deadline: float) -> dict:
    """Display size (rotation and pixel aspect applied), frame time stamps, keyframes, codec facts."""
    if not os.path.exists(path):
        raise FrameError("missing file")
    if os.path.isdir(path):
        raise FrameError("not a file (a directory)")
    if os.path.getsize(path) == 0:
        raise FrameError("empty file (0 bytes)")
    url = ffmpeg_url(path)
    proc = _run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", url], deadline, "probe"
    )
    info = json.loads(proc.stdout or b"{}") if proc.returncode == 0 else {}
    if proc.returncode != 0 or not info.get("format"):
        reason = _last_line(proc.stderr, "unrecognised format")
        if b"moov atom not found" in proc.stderr and _starts_like_mp4(path):  # the index sits at the end
            raise FrameError(
                "truncated file: not a readable media file (ffprobe: moov atom not found, "
                "the MP4 index at the end of the file is missing)"
            )
        raise FrameError(f"not a readable media file (ffprobe: {reason})")
    streams = info.get("streams", [])
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "?") for s in streams})
        raise FrameError(f"no video stream (streams: {', '.join(kinds) or 'none'})")
    stream = videos[0]
    coded_w, coded_h = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise FrameError("video stream has no frame size (codec not decodable here?)")
    width, height = coded_w, coded_h
    sar = _ratio(stream.get("sample_aspect_ratio"), ":")
    if sar and abs(sar - 1) > 1e-3:
        width = max(1, round(width * sar))
    rotation = _rotation(stream)
    if rotation % 180 == 90:
        width, height = height, width

    proc = _run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            str(stream["index"]),
            "-show_entries",
            "packet=pts_time,dts_time,flags",
            "-of",
            "csv=p=0",
            url,
        ],
        deadline,
        "reading packet times",
    )
    times, keys = _packet_times(proc.stdout.decode("ascii", "replace"))
    if not times:
        raise FrameError(f"decode error: no video packets ({_last_line(proc.stderr, 'empty stream')})")
    header_frames = int(stream.get("nb_frames") or 0)
    if header_frames and len(times) < header_frames:
        raise FrameError(
            f"truncated file: {len(times)} of {header_frames} frames present "
            f"({_last_line(proc.stderr, 'stream ends early')})"
        )
    avg_fps = _ratio(stream.get("avg_frame_rate"), "/") or _ratio(stream.get("r_frame_rate"), "/") or 25.0
    gaps = np.diff(times)
    frame_seconds = float(np.median(gaps)) if len(gaps) else 1.0 / avg_fps
    duration = times[-1] - times[0] + frame_seconds
    return {
        "width": width,
        "height": height,
        "coded_width": coded_w,
        "coded_height": coded_h,
        "rotation": rotation,
        "times": times,
        "keyframes": keys,
        "fps": len(times) / duration,
        "duration": duration,
        "start_time": float(info["format"].get("start_time") or 0.0),
        "stream_index": int(stream["index"]),
        "codec": stream.get("codec_name"),
        "pix_fmt": stream.get("pix_fmt"),
        "sar": sar or 1.0,
        "format": info["format"].get("format_name"),
        "exact_seek": any(f in EXACT_SEEK_FORMATS for f in info["format"].get("format_name", "").split(",")),
        "vfr": bool(len(gaps)) and float(gaps.max() - gaps.min()) > 0.5 * frame_seconds,
    }


def _starts_like_mp4(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(12)[4:8] == b"ftyp"


def _packet_times(text: str) -> tuple[list[float], list[int]]:
    """Presentation-ordered frame times and the positions (in that order) of keyframes."""
    rows = []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3:
            continue
        pts, dts, flags = parts[0], parts[1], parts[2]
        if "D" in flags:  # discarded by the demuxer (edit list): never shown
            continue
        stamp = pts if pts not in ("", "N/A") else dts
        try:
            rows.append((float(stamp), "K" in flags))
        except ValueError:
            continue
    rows.sort(key=lambda r: r[0])
    return [t for t, _ in rows], [i for i, (_, k) in enumerate(rows) if k]


def _ratio(text: str | None, sep: str) -> float:
    try:
        num, den = (float(x) for x in (text or "").split(sep))
        return num / den if den and num else 0.0
    except ValueError:
        return 0.0


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return round(float(side["rotation"])) % 360
    try:
        return int(stream.get("tags", {}).get("rotate", 0)) % 360
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------- planning
def sample_times(times: list[float], n: int) -> list[float]:
    """n evenly spaced times from the first frame to the last (as Qwen's linspace over indices)."""
    if n == 1 or len(times) == 1:
        return [times[0]] * n
    return list(np.linspace(times[0], times[-1], n))


def frames_shown_at(times: list[float], targets: list[float]) -> list[int]:
    """Index of the frame on screen at each target time: the last frame starting at or before it."""
    eps = 1e-6
    return [max(0, bisect_right(times, t + eps) - 1) for t in targets]


def plan_runs(
    wanted: list[int], keyframes: list[int], seek_cost: int = SEEK_COST_FRAMES
) -> list[tuple[int, int]]:
    """Group sorted distinct frame indices into (first, last) decode runs.

    Within a run every frame is decoded; a new run (a seek) starts when a keyframe lies more than
    ``seek_cost`` frames past the current position on the way to the next wanted frame.
    """
    runs = []
    for idx in wanted:
        if runs:
            first, pos = runs[-1]
            k = keyframes[bisect_right(keyframes, idx) - 1] if keyframes and keyframes[0] <= idx else 0
            if k - pos <= seek_cost:
                runs[-1] = (first, idx)
                continue
        runs.append((idx, idx))
    return runs


def decoded_frames(runs: list[tuple[int, int]], keyframes: list[int]) -> int:
    """Frames the decoder works through for these runs (from the keyframe before each run start)."""
    total = 0
    for first, last in runs:
        k = keyframes[bisect_right(keyframes, first) - 1] if keyframes and keyframes[0] <= first else 0
        total += last - k + 1
    return total


# -------------------------------------------------------------------------------------- ffmpeg
def decode_ffmpeg(
    path: str,
    info: dict,
    wanted: list[int],
    width: int,
    height: int,
    deliver,
    deadline: float,
    threads: int = 0,
) -> dict:
    """Decode the wanted frames (sorted, distinct) run by run; ``deliver(index, frame)`` for each.

    Inside a run ffmpeg's select filter drops the unwanted frames right after decoding, so only the
    sampled frames are scaled, converted to RGB and piped.
    """
    runs = plan_runs(wanted, info["keyframes"]) if info["exact_seek"] else [(0, wanted[-1])]
    times = info["times"]
    warnings = []
    for first, last in runs:
        picks = [i for i in wanted if first <= i <= last]
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", str(threads)]
        if first > 0:
            # accurate seek: demuxer jumps to the keyframe before, decoder discards frames before this
            # time; halfway to the previous frame's time so rounding never drops the wanted frame
            seek = (times[first - 1] + times[first]) / 2 - info["start_time"]
            cmd += ["-ss", f"{max(seek, 0.0):.6f}"]
        chain = f"scale={width}:{height}:flags=bicubic,format=rgb24"
        if len(picks) < last - first + 1:  # n counts the run's decoded frames from 0
            chain = f"select='{_pick_expression([i - first for i in picks])}'," + chain
        cmd += [
            "-i",
            ffmpeg_url(path),
            "-map",
            f"0:{info['stream_index']}",
            "-an",
            "-sn",
            "-dn",
            "-vf",
            chain,
            "-fps_mode",
            "passthrough",
            "-frames:v",
            str(len(picks)),
            "-f",
            "rawvideo",
            "pipe:",
        ]
        got, stderr = _read_run(cmd, picks, width, height, deliver, deadline)
        if stderr:
            warnings.append(_last_line(stderr, ""))
        if got == 0 and first == runs[0][0]:
            raise FrameError(f"decode error: {_last_line(stderr, 'no frame could be decoded', first=True)}")
        if got < len(picks):  # the decoder stopped early: later wanted frames repeat the last one delivered
            warnings.append(f"decoder gave {got} of {len(picks)} frames in {first}..{last}")
            for idx in picks[got:]:
                deliver(idx, None)
    return {
        "runs": len(runs),
        "decoded_frames": decoded_frames(runs, info["keyframes"]),
        "warnings": [w for w in warnings if w][:5],
    }


def _pick_expression(picks: list[int]) -> str:
    """A select expression true for frame numbers in ``picks`` (sorted): a binary search, so each
    frame costs log2(len) comparisons and nesting stays shallow (ffmpeg's parser allows ~100 levels,
    a flat a+b+c chain of 100 terms already fails)."""
    if len(picks) == 1:
        return f"eq(n,{picks[0]})"
    mid = len(picks) // 2
    return f"if(lt(n,{picks[mid]}),{_pick_expression(picks[:mid])},{_pick_expression(picks[mid:])})"


def _read_run(cmd, picks, width, height, deliver, deadline):
    """Run one ffmpeg run, delivering its frames as they arrive; returns (frames read, stderr text)."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    expired = threading.Event()

    def kill():
        expired.set()
        process.kill()

    timer = threading.Timer(max(deadline - time.monotonic(), 0), kill)
    timer.start()
    frame_bytes = width * height * 3
    got = 0
    try:
        while got < len(picks):
            chunk = process.stdout.read(frame_bytes)
            if len(chunk) < frame_bytes:
                break
            deliver(picks[got], np.frombuffer(chunk, np.uint8).reshape(height, width, 3))
            got += 1
    finally:
        timer.cancel()
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(timeout=5)
    if expired.is_set():
        raise FrameError("timeout: decoding not finished within the per-video limit")
    return got, b"".join(errors).decode("utf-8", "replace")


# -------------------------------------------------------------------------------------- decord
def decode_decord(
    path: str,
    info: dict,
    wanted: list[int],
    width: int,
    height: int,
    deliver,
    deadline: float,
    threads: int = 0,
    chunk: int = 32,
) -> dict:
    """decord with the size set at open (scaled in its decoder).

    decord (0.6) applies the rotation metadata itself and takes the display size at open; the tests
    check its frames against ffmpeg's. It seeks on its own when a batch skips ahead. The timeout is
    checked between chunks only (a decord call cannot be interrupted).
    """
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(path, width=width, height=height, num_threads=threads)
        total = len(reader)
    except Exception as exc:  # noqa: BLE001 -- decord raises DECORDError / RuntimeError with C++ traces
        raise FrameError(f"decode error (decord): {_decord_reason(exc)}") from None
    if total != len(info["times"]):
        raise FrameError(f"decode error (decord): {total} frames, the container lists {len(info['times'])}")
    for start in range(0, len(wanted), chunk):
        if time.monotonic() > deadline:
            raise FrameError("timeout: decoding not finished within the per-video limit")
        part = wanted[start : start + chunk]
        try:
            batch = reader.get_batch(part).asnumpy()
        except Exception as exc:  # noqa: BLE001 -- as above
            raise FrameError(f"decode error (decord): {_decord_reason(exc)}") from None
        if batch.shape[1:] != (height, width, 3):
            raise FrameError(
                f"decode error (decord): frames of shape {batch.shape[1:]}, asked for {height}x{width}"
            )
        for idx, frame in zip(part, batch):
            deliver(idx, frame)
    return {"runs": None, "decoded_frames": None, "warnings": []}


def _decord_reason(exc: Exception) -> str:
    """decord's messages carry a C++ location and check expression; keep the human part."""
    text = (str(exc).strip().splitlines() or ["unknown error"])[0]
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text)
    tail = re.search(r"\(-?\d+ vs\. -?\d+\) (.+)$", text)
    return (tail.group(1) if tail else text)[:200]
