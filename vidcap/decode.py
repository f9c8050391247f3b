"""Decoding the frames shown at given times, with ffmpeg (subprocess) or decord.

``probe`` (probe.py) gives the time stamps of the frames a player shows, so sampling works on time: the
frame taken for time t is the last frame whose time stamp is <= t, right for variable frame rate too.
``plan_runs`` groups the wanted frames into decode runs: a run seeks to the keyframe before its first
frame and decodes forward; a new run starts only when a keyframe lies well past the current position,
so dense sampling is one decoding pass and sparse sampling skips whole GOPs.

In ffmpeg (argument lists built with ffmpeg-python) the select filter keeps the wanted frames by their
presentation time stamp (``-copyts``: the stamps the probe read), so it does not matter where a seek
lands or whether the decoder drops undecodable leading pictures; streams without presentation times
(AVI) are read from the start and picked by decoded frame number. Only the kept frames are scaled
(libswscale, pixel aspect applied; 4:2:0 sources scaled in 4:2:0, then converted to RGB), and handed
over as they arrive. A run that yields fewer frames than asked raises FrameMismatch: the caller then
reads the frame times from the decoder itself and samples again. ffmpeg's fps= filter is not used:
it takes the frame after each time stamp. Every failure raises FrameError with a readable reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from bisect import bisect_right
from typing import Self

import ffmpeg
import numpy as np

from vidcap.probe import EXACT_SEEK_FORMATS, FrameError, ffmpeg_url, last_line, probe

__all__ = [
    "EXACT_SEEK_FORMATS",
    "FrameError",
    "FrameMismatch",
    "Prestarted",
    "decode_decord",
    "decode_ffmpeg",
    "decoded_frames",
    "ffmpeg_input",
    "ffmpeg_url",
    "frames_shown_at",
    "pick_filters",
    "plan_runs",
    "probe",
    "sample_times",
]

SEEK_COST_FRAMES = 48  # a new seek (process start, demuxer seek) costs about this many decoded frames


class FrameMismatch(FrameError):
    """The decoder did not output a frame the packets promised (dropped leading picture, odd stream)."""


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
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]


def decode_ffmpeg(
    path: str,
    info: dict,
    wanted: list[int],
    width: int,
    height: int,
    deliver,
    deadline: float,
    threads: int = 0,
    strict: bool = True,
    prestarted: Prestarted | None = None,
    sink=None,
) -> dict:
    """Decode the wanted frames (sorted, distinct) run by run; ``deliver(index, frame)`` for each.

    When a run gives fewer frames than asked: ``strict`` raises FrameMismatch (after delivering those
    it got); otherwise each missing frame repeats the last one delivered (``deliver(index, None)``).
    ``prestarted``: an ffmpeg already started for this file, used for a first run that needs no seek.
    ``sink`` (strict only): a file ffmpeg writes the frames into itself, at its position, instead of
    ``deliver``; the prestarted ffmpeg must write there too.
    """
    assert sink is None or strict, "a sink cannot repeat missing frames"
    seekable = info["timed"] and info["exact_seek"]
    runs = plan_runs(wanted, info["keyframes"]) if seekable else [(wanted[0], wanted[-1])]
    warnings = []
    for first, last in runs:
        picks = [i for i in wanted if first <= i <= last]
        seek = _seek_seconds(info, picks[0]) if seekable else None
        start = _position(sink) if sink else None
        if prestarted and first == runs[0][0] and seek is None:
            process = prestarted.feed(run_graph(info, picks, width, height))
        else:
            cmd = ffmpeg_command(path, info, picks, width, height, threads, seek)
            process = subprocess.Popen(
                cmd, stdout=sink or subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        if sink:
            got, stderr = _wait_run(process, sink, start, width * height * 3, deadline)
        else:
            got, stderr = _read_run(process, picks, width, height, deliver, deadline)
        if stderr:
            warnings.append(last_line(stderr, ""))
        if got < len(picks):
            message = f"decoder gave {got} of {len(picks)} frames in {first}..{last}"
            if strict:
                raise FrameMismatch(message)
            if got == 0 and first == runs[0][0]:
                raise FrameError(
                    f"decode error: {last_line(stderr, 'no frame could be decoded', first=True)}"
                )
            warnings.append(message)
            for idx in picks[got:]:
                deliver(idx, None)
    return {
        "runs": len(runs),
        "decoded_frames": decoded_frames(runs, info["keyframes"] if seekable else [0]),
        "warnings": [w for w in warnings if w][:5],
    }


def _seek_seconds(info: dict, first: int) -> float | None:
    """Where a run starting at frame ``first`` seeks: its keyframe (the demuxer lands there or on an
    earlier one, never later); None from the start of the file."""
    keyframes = info["keyframes"]
    k = keyframes[bisect_right(keyframes, first) - 1] if keyframes and keyframes[0] <= first else 0
    return max(info["times"][k] - info["start_time"], 0.0) if k > 0 else None


def ffmpeg_input(path: str, threads: int, seek: float | None = None):
    # -copyts: the filters see the demuxer's own time stamps, the ones the probe listed; frames
    # before the seek point are dropped by the select filter, not by -ss
    options = {"threads": threads, "copyts": None, "noaccurate_seek": None}
    if seek is not None:
        options["ss"] = f"{seek:.6f}"
    return ffmpeg.input(ffmpeg_url(path), **options)


def pick_filters(stream, info: dict, picks: list[int], width: int, height: int):
    """Keep ``picks`` (by time stamp, or by frame number when the stream has none), scale, RGB.

    The trim ends the run after its last pick, so a frame that never comes cannot make it read on.
    """
    if info["timed"]:
        stream = stream.filter("trim", end_pts=info["pts"][picks[-1]] + 1)
        stream = stream.filter("select", _pick_expression([info["pts"][i] for i in picks], "pts"))
    else:  # read from the start: n counts decoded frames from 0
        stream = stream.filter("trim", end_frame=picks[-1] + 1)
        if len(picks) < picks[-1] + 1:
            stream = stream.filter("select", _pick_expression(picks, "n"))
    return _to_rgb(stream, info.get("pix_fmt") or "", width, height)


def _to_rgb(stream, pix_fmt: str, width: int, height: int):
    """Scale (bicubic) to the planned size, then RGB.

    A 4:2:0 source is scaled in 4:2:0 and converted to RGB after, unscaled: libswscale's one-pass
    scale-to-RGB path is plain C and took ~4x the CPU per frame (7 vs 1.8 ms at 1008x560 on this
    machine), a fifth of a 10 s 720p clip's whole extraction. The chroma it drops was never there.
    """
    stream = stream.filter("scale", width, height, flags="bicubic")
    if pix_fmt.startswith(("yuv420", "yuvj420")):
        # yuvj420p keeps its full range; deeper 4:2:0 goes to 8 bits here, as the RGB does anyway
        stream = stream.filter("format", "yuvj420p" if pix_fmt.startswith("yuvj") else "yuv420p")
        stream = stream.filter("scale")
    return stream.filter("format", "rgb24")


def ffmpeg_command(
    path: str,
    info: dict,
    picks: list[int],
    width: int,
    height: int,
    threads: int = 0,
    seek: float | None = None,
) -> list[str]:
    """ffmpeg's argument list for one run: decode, keep ``picks``, scale, raw RGB to stdout."""
    stream = pick_filters(
        ffmpeg_input(path, threads, seek)[str(info["stream_index"])], info, picks, width, height
    )
    out = ffmpeg.output(
        stream, "pipe:", format="rawvideo", fps_mode="passthrough", **{"frames:v": len(picks)}
    )
    return out.compile(cmd=[*FFMPEG, *filter_thread_args(threads)])


def filter_thread_args(threads: int) -> list[str]:
    """Filter threads like the decoder's: ffmpeg's default is one per core of the node, not of the job."""
    if threads <= 0:
        return []
    return ["-filter_threads", str(threads), "-filter_complex_threads", str(threads)]


def run_graph(info: dict, picks: list[int], width: int, height: int) -> str:
    """The filter graph of a first run, its output labelled [out] (what Prestarted maps)."""
    stream = pick_filters(ffmpeg.input("-")[str(info["stream_index"])], info, picks, width, height)
    args = ffmpeg.output(stream, "pipe:").get_args()
    graph, label = args[args.index("-filter_complex") + 1], args[args.index("-map") + 1]
    assert graph.endswith(label), (graph, label)
    return graph[: -len(label)] + "[out]"


class Prestarted:
    """An ffmpeg started for a file before its probe has finished.

    Starting ffmpeg costs about as much as probing a short clip (it loads a few dozen libraries), so it
    starts alongside the probe and waits for its filter graph on stdin (-filter_complex_script
    pipe:0); the first run always starts at the first frame, with no seek, so nothing else in its
    command depends on the probe.
    """

    def __init__(self, path: str, threads: int = 0, sink=None):
        """``sink``: a file to write the frames into (see decode_ffmpeg), else a pipe."""
        out = ffmpeg_input(path, threads).output(
            "pipe:1", map="[out]", format="rawvideo", fps_mode="passthrough"
        )
        cmd = out.compile(cmd=[*FFMPEG, *filter_thread_args(threads), "-filter_complex_script", "pipe:0"])
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=sink or subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.sink = sink
        self.used = False

    def feed(self, graph: str) -> subprocess.Popen:
        self.used = True
        try:
            self.process.stdin.write(graph.encode("utf-8"))
            self.process.stdin.close()
        except BrokenPipeError:  # ffmpeg already gave up; _read_run reports its stderr
            pass
        return self.process

    def close(self) -> None:
        """Stop it if nobody used it (the probe failed, another backend, a seek first)."""
        if not self.used and self.process.poll() is None:
            self.process.kill()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe and not pipe.closed:
                pipe.close()
        self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pick_expression(picks: list[int], var: str = "n") -> str:
    """A select expression true when ``var`` (n: frame number, pts: time stamp) is in ``picks``
    (sorted): a binary search, so each frame costs log2(len) comparisons and nesting stays shallow
    (ffmpeg's parser allows ~100 levels, a flat a+b+c chain of 100 terms already fails)."""
    if len(picks) == 1:
        return f"eq({var},{picks[0]})"
    mid = len(picks) // 2
    low, high = _pick_expression(picks[:mid], var), _pick_expression(picks[mid:], var)
    return f"if(lt({var},{picks[mid]}),{low},{high})"


def _read_run(process: subprocess.Popen, picks, width, height, deliver, deadline):
    """Read one run's frames from a started ffmpeg, delivering them as they arrive; returns (frames
    read, stderr text)."""
    with _watched(process, deadline) as errors:
        try:
            got = read_frames(process.stdout, picks, width, height, deliver)
        finally:
            process.stdout.close()
    return got, b"".join(errors).decode("utf-8", "replace")


def read_frames(stream, picks, width: int, height: int, deliver) -> int:
    """Hand each whole RGB frame of ``stream`` to ``deliver(pick, frame)`` as it arrives, one per pick;
    returns how many came before the stream ended."""
    frame_bytes = width * height * 3
    got = 0
    while got < len(picks):
        chunk = stream.read(frame_bytes)
        if len(chunk) < frame_bytes:
            break
        deliver(picks[got], np.frombuffer(chunk, np.uint8).reshape(height, width, 3))
        got += 1
    return got


def _wait_run(process: subprocess.Popen, sink, start: int, frame_bytes: int, deadline):
    """Wait for a run that writes into ``sink`` from ``start``; keep its whole frames. Returns (frames
    written, stderr text)."""
    with _watched(process, deadline) as errors:
        process.wait()
    fd = sink.fileno()
    got = (os.lseek(fd, 0, os.SEEK_END) - start) // frame_bytes
    os.ftruncate(fd, start + got * frame_bytes)  # a frame cut short by an error
    sink.seek(start + got * frame_bytes)  # moved by ffmpeg: Python's file object relearns where it is
    return got, b"".join(errors).decode("utf-8", "replace")


def _position(sink) -> int:
    sink.flush()
    return os.lseek(sink.fileno(), 0, os.SEEK_CUR)


@contextlib.contextmanager
def _watched(process: subprocess.Popen, deadline: float):
    """Collect the stderr of a started ffmpeg, kill it at the deadline (FrameError) and on the way
    out; yields the list its stderr lands in."""
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    expired = threading.Event()

    def kill():
        expired.set()
        process.kill()

    timer = threading.Timer(max(deadline - time.monotonic(), 0), kill)
    timer.start()
    try:
        yield errors
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(timeout=5)
    if expired.is_set():
        raise FrameError("timeout: decoding not finished within the per-video limit")


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
        raise FrameMismatch(f"{total} frames, a player shows {len(info['times'])}")
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
