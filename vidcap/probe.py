"""What a player would show: a video stream's frame times, keyframes and display size.

One reading gives the stream facts and every packet's time stamps and flags (demuxing only, no
decoding): PyAV's in this process (vidcap.demux) where it reads the file cleanly, else one ffprobe
run, whose messages then give a failing file's reason. Packets stand in for frames the way a player
sees them:

- packets the demuxer marks discarded (``D``: hidden by an MP4/MOV edit list) are never shown, so a
  stream-copied cut starts at the frame shown at the edit start, time stamps relative to it;
- in a stream with presentation time stamps, a packet without one (a leading picture a stream copy
  could not place, an HEVC RASL picture) is not shown either;
- AVI and raw streams carry no presentation times: their frames are the decode slots (dts), in order.

A file is "truncated" only when the frames end well before the stream's own declared duration, never
because container counts (nb_frames, index entries, packets) disagree. ``probe(..., decoded=True)``
asks the decoder for the frames it really outputs instead (a full decode): the slow path used when
the decoder disagrees with the packets (see frames.sample_video).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time

import numpy as np

from vidcap import demux

# containers with a sample index, where a seek lands on the keyframe asked for; others (MPEG-TS/PS,
# raw streams) seek by byte position and may land late, so they are always read from the start
EXACT_SEEK_FORMATS = ("mov", "mp4", "matroska", "webm")


class FrameError(Exception):
    """A video or image cannot be used; the message is the record's error reason."""


class Truncated(FrameError):
    """The frames end well before the stream's declared end; ``declared``: that end in seconds."""

    def __init__(self, message: str, declared: float):
        super().__init__(message)
        self.declared = declared


def last_line(text: str | bytes, default: str, first: bool = False) -> str:
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


def run(cmd: list[str], deadline: float, what: str) -> subprocess.CompletedProcess:
    """Run an argument list (never a shell) within the per-video deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FrameError(f"timeout: {what} not finished within the per-video limit")
    try:
        return subprocess.run(
            cmd, capture_output=True, timeout=remaining, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise FrameError(f"timeout: {what} not finished within the per-video limit") from None


def ffprobe(url: str, deadline: float, what: str, *args: str) -> tuple[dict, bytes, int]:
    """The one place ffprobe runs: JSON output of ``args`` for ``url``; (data, stderr, returncode).

    ffmpeg-python's ``ffmpeg.probe`` (0.2) has no timeout and always adds -show_streams, so the
    argument list is built here; the deadline kills a hung ffprobe.
    """
    proc = run(["ffprobe", "-v", "error", "-of", "json", *args, url], deadline, what)
    try:
        data = json.loads(proc.stdout or b"{}") if proc.returncode == 0 else {}
    except ValueError:
        data = {}
    return data, proc.stderr, proc.returncode


# ----------------------------------------------------------------------------------------- probe
def probe(
    path: str, deadline: float, decoded: bool = False, truncated_ok: bool = False, in_process: bool = True
) -> dict:
    """Display size (rotation and pixel aspect applied), frame times, keyframes, codec facts.

    ``decoded``: frame times from a full decode (what the decoder outputs) instead of the packets.
    ``truncated_ok``: a truncated file is not an error; ``declared_duration`` then gives its declared length
    (windowed long videos caption what is left, vidcap.long_frames).
    ``in_process``: packets read with PyAV (vidcap.demux) where it reads the file cleanly; ffprobe
    reads whatever it does not, and every file that fails, so that its messages give the reason.
    """
    if not os.path.exists(path):
        raise FrameError("missing file")
    if os.path.isdir(path):
        raise FrameError("not a file (a directory)")
    if os.path.getsize(path) == 0:
        raise FrameError("empty file (0 bytes)")
    url = ffmpeg_url(path)
    if in_process and not decoded:
        info = demux.read(url, deadline)
        if info is not None:
            with contextlib.suppress(FrameError):  # ffprobe reads it again and says why
                return _facts(info, b"", decoded, truncated_ok, "pyav")
    rows = (
        "frame=best_effort_timestamp,pkt_duration,key_frame" if decoded else "packet=pts,dts,duration,flags"
    )
    entries = f"stream:stream_side_data_list:stream_tags:format=format_name,start_time:{rows}"
    info, stderr, code = ffprobe(url, deadline, "probe", "-select_streams", "V:0", "-show_entries", entries)
    if code != 0 or not info.get("format"):
        _unreadable(path, stderr)
    if not info.get("streams"):
        _no_video(url, deadline)
    return _facts(info, stderr, decoded, truncated_ok, "ffprobe")


def _facts(info: dict, stderr: bytes, decoded: bool, truncated_ok: bool, reader: str) -> dict:
    """probe's answer from ffprobe's JSON (or vidcap.demux's reading in the same shape)."""
    stream = info["streams"][0]
    facts = _display(stream)
    tb = _ratio(stream.get("time_base"), "/") or 1e-3
    if decoded:
        pts, keys, durations, timed = _frame_rows(info.get("frames", []))
    else:
        pts, keys, durations, timed = _packet_rows(info.get("packets", []))
    if not pts:
        raise FrameError(
            f"decode error: no video {'frames' if decoded else 'packets'} ({last_line(stderr, 'empty stream')})"
        )
    times = [p * tb for p in pts]
    gaps = np.diff(times)
    avg_fps = _ratio(stream.get("avg_frame_rate"), "/") or _ratio(stream.get("r_frame_rate"), "/") or 25.0
    frame_seconds = float(np.median(gaps)) if len(gaps) else 1.0 / avg_fps
    last_seconds = durations[-1] * tb if durations and durations[-1] > 0 else frame_seconds
    declared = None
    try:
        _check_complete(stream, times, last_seconds, frame_seconds, stderr)
    except Truncated as exc:
        if not truncated_ok:
            raise
        declared = exc.declared
    duration = times[-1] - times[0] + frame_seconds
    fmt = info["format"]
    return {
        **facts,
        "times": times,
        "pts": pts,
        "timed": timed,
        "keyframes": keys,
        "fps": len(times) / duration,
        "duration": duration,
        "start_time": float(fmt.get("start_time") or 0.0),
        "stream_index": int(stream["index"]),
        "codec": stream.get("codec_name"),
        "pix_fmt": stream.get("pix_fmt"),
        "format": fmt.get("format_name"),
        "exact_seek": any(f in EXACT_SEEK_FORMATS for f in (fmt.get("format_name") or "").split(",")),
        "open_gop": False if decoded else open_gop(info.get("packets", [])),
        "vfr": bool(len(gaps)) and float(gaps.max() - gaps.min()) > 0.5 * frame_seconds,
        "frame_source": "decoder" if decoded else "packets",
        "reader": reader,
        "declared_duration": declared,
    }


def _unreadable(path: str, stderr: bytes) -> None:
    reason = last_line(stderr, "unrecognised format")
    if b"moov atom not found" in stderr and _starts_like_mp4(path):  # the index sits at the end
        raise FrameError(
            "truncated file: not a readable media file (ffprobe: moov atom not found, "
            "the MP4 index at the end of the file is missing)"
        )
    raise FrameError(f"not a readable media file (ffprobe: {reason})")


def _no_video(url: str, deadline: float) -> None:
    info, _, _ = ffprobe(url, deadline, "probe", "-show_entries", "stream=codec_type")
    kinds = sorted({s.get("codec_type", "?") for s in info.get("streams", [])})
    raise FrameError(f"no video stream (streams: {', '.join(kinds) or 'none'})")


def _display(stream: dict) -> dict:
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
    return {
        "width": width,
        "height": height,
        "coded_width": coded_w,
        "coded_height": coded_h,
        "rotation": rotation,
        "sar": sar or 1.0,
    }


def _packet_rows(packets: list[dict]) -> tuple[list[int], list[int], list[int], bool]:
    """Presentation-ordered time stamps (stream time base) of the shown frames, keyframe positions,
    durations, and whether the stream has presentation times (else decode slots stand in)."""
    kept = [p for p in packets if "D" not in p.get("flags", "")]  # hidden by an edit list
    # AVI gives B-frame streams' I/P packets no pts (a third of them); a cut's unplaceable leading
    # pictures are a handful
    timed = sum(1 for p in kept if "pts" not in p) <= 0.1 * len(kept)
    rows = []
    for p in kept:
        stamp = p.get("pts") if timed else p.get("dts", p.get("pts"))
        if stamp is not None:  # timed stream: a packet that cannot be placed in time is not shown
            rows.append((int(stamp), "K" in p.get("flags", ""), int(p.get("duration") or 0)))
    return _ordered(rows, timed)


def open_gop(packets: list[dict]) -> bool:
    """Some packet after a keyframe (in decode order, first keyframe aside) is shown before it: it
    references the GOP before, so a decoder that starts at that keyframe cannot show it."""
    keys_seen, key_pts = 0, None
    for p in packets:
        if "pts" not in p or "D" in p.get("flags", ""):
            continue
        if "K" in p.get("flags", ""):
            keys_seen, key_pts = keys_seen + 1, int(p["pts"])
        elif keys_seen > 1 and int(p["pts"]) < key_pts:
            return True
    return False


def _frame_rows(frames: list[dict]) -> tuple[list[int], list[int], list[int], bool]:
    rows = [
        (int(f["best_effort_timestamp"]), bool(f.get("key_frame")), int(f.get("pkt_duration") or 0))
        for f in frames
        if f.get("best_effort_timestamp") is not None
    ]
    return _ordered(rows, True)


def _ordered(rows: list[tuple[int, bool, int]], timed: bool):
    rows.sort(key=lambda r: r[0])
    deduped = [r for i, r in enumerate(rows) if i == 0 or r[0] != rows[i - 1][0]]
    return (
        [r[0] for r in deduped],
        [i for i, r in enumerate(deduped) if r[1]],
        [r[2] for r in deduped],
        timed,
    )


def _check_complete(stream: dict, times: list[float], last: float, frame: float, stderr: bytes) -> None:
    """Truncated: the frames end more than two frames (and 1%) before the stream's declared end."""
    declared = _float(stream.get("duration")) or _tag_seconds(stream.get("tags", {}).get("DURATION"))
    if not declared:
        return  # nothing promises more frames than there are
    start = _float(stream.get("start_time")) or 0.0
    missing = (start + declared) - (times[-1] + last)
    if missing > max(2 * frame, 0.01 * declared):
        shown = times[-1] + last - start
        raise Truncated(
            f"truncated file: frames end at {shown:.2f} s of {declared:.2f} s "
            f"({last_line(stderr, 'stream ends early')})",
            declared,
        )


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def _tag_seconds(text: str | None) -> float:
    """Matroska's DURATION tag, "00:00:05.000000000"."""
    match = re.match(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$", text or "")
    if not match:
        return 0.0
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def _starts_like_mp4(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(12)[4:8] == b"ftyp"


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
