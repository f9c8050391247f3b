"""A video's stream facts and packets read in this process with PyAV, in ffprobe's JSON shape.

An ffprobe run costs about 0.1 CPU-s before it reads a byte (its dynamic linker resolves some 200
shared libraries): a fifth of what decoding a whole 10 s 720p clip costs, and most clips in a dataset
are that short. PyAV (libavformat in-process) reads the same packets in milliseconds. ``read`` returns
what ``ffprobe -select_streams V:0 -show_entries stream:...:packet=pts,dts,duration,flags`` prints, so
probe.py turns either reading into frame times the same way.

``read`` gives None whenever PyAV cannot read the file cleanly: the caller then asks ffprobe, whose
messages become the record's error reason. PyAV bundles its own FFmpeg, which may be newer than the
ffmpeg that decodes; where they could disagree on which frames are shown, decode.FrameMismatch sends
sampling to the decoder's own frame times, and tests compare both readings on every wild clip.

PyAV exposes a stream's display matrix (rotation) only on decoded frames, so the first frame is
decoded (single-threaded, so that it comes out of the first packets). A rotated video is left to
ffprobe: a frame's rotation may also come from the bitstream (an H.264 display-orientation SEI),
which an older ffmpeg does not apply, so only "not rotated" is taken from PyAV.
"""

from __future__ import annotations

import time
from fractions import Fraction

try:
    import av
    import av.stream
except ImportError:  # an environment without PyAV (envs/caption.yaml) reads every file with ffprobe
    av = None

# containers whose packets PyAV's FFmpeg and ffprobe were seen to read alike (tests compare them on
# edit-list cuts, fragments, open GOP, HEVC, VP9); AVI's time stamps differ between FFmpeg versions
IN_PROCESS_FORMATS = ("mov", "mp4", "matroska", "webm", "mpegts")
# packets decoded at most while looking for the first frame (an edit list hides a GOP's worth)
ROTATION_PACKETS = 300


def read(url: str, deadline: float) -> dict | None:
    """ffprobe's JSON for the first video stream (not cover art) and its packets; None: ask ffprobe."""
    remaining = deadline - time.monotonic()
    if av is None or remaining <= 0:
        return None
    try:
        with av.open(url, timeout=remaining, metadata_errors="replace") as container:
            if not set(container.format.name.split(",")) & set(IN_PROCESS_FORMATS):
                return None
            stream = _first_video(container)
            if stream is None:
                return None
            packets, rotation = _packets(container, stream, deadline)
            if rotation != 0 or not packets:
                return None  # rotated, or no frame came out: ffprobe's stream facts decide
            return {
                "format": _format(container),
                "streams": [_stream(stream)],
                "packets": packets,
            }
    except (av.FFmpegError, OSError, UnicodeError, ValueError):
        return None


def _first_video(container):
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _packets(container, stream, deadline: float) -> tuple[list[dict], int | None]:
    stream.codec_context.thread_type = "NONE"
    rows, rotation = [], None
    for packet in container.demux(stream):
        if packet.size == 0 and packet.pts is None and packet.dts is None:
            continue  # the demuxer's end-of-stream marker
        row = {"flags": ("K" if packet.is_keyframe else "_") + ("D" if packet.is_discard else "_")}
        for key in ("pts", "dts", "duration"):
            if getattr(packet, key) is not None:
                row[key] = getattr(packet, key)
        rows.append(row)
        if rotation is None and len(rows) <= ROTATION_PACKETS:
            rotation = _rotation(packet.decode)
        if len(rows) % 1000 == 0 and time.monotonic() > deadline:
            return [], None
    if rotation is None:  # the first frame is still inside the decoder (a one-frame clip)
        rotation = _rotation(lambda: stream.codec_context.decode(None))
    return rows, rotation


def _rotation(decode) -> int | None:
    """The rotation of the first frame ``decode()`` gives; None while it gives none."""
    try:
        frames = decode()
    except av.FFmpegError:
        return None  # an undecodable leading packet: the next one may do
    return frames[0].rotation if frames else None


def _format(container) -> dict:
    fmt = {"format_name": container.format.name}
    if container.start_time is not None:
        fmt["start_time"] = str(container.start_time / av.time_base)
    return fmt


def _stream(stream) -> dict:
    ctx = stream.codec_context
    tb = stream.time_base or Fraction(1, 1000)
    info = {
        "index": stream.index,
        "codec_name": ctx.name,
        "pix_fmt": ctx.pix_fmt,
        "width": ctx.width,
        "height": ctx.height,
        "sample_aspect_ratio": _ratio(stream.sample_aspect_ratio, ":"),
        "time_base": _ratio(tb, "/"),
        "avg_frame_rate": _ratio(stream.average_rate, "/"),
        "r_frame_rate": _ratio(stream.base_rate, "/"),
        "tags": dict(stream.metadata),
        "side_data_list": [],  # not rotated (see the module's doc)
    }
    for key in ("duration", "start_time"):
        if getattr(stream, key) is not None:
            info[key] = str(float(getattr(stream, key) * tb))
    return info


def _ratio(value: Fraction | None, sep: str) -> str:
    return f"{value.numerator}{sep}{value.denominator}" if value else f"0{sep}1"
