"""A video's own audio track, decoded with ffmpeg to what speech models take: 16 kHz mono float32.

Shared by the transcript step (Whisper-family ASR) and the native mode (Omni thinkers). A video without an
audio stream is :class:`NoAudio`; a stream ffmpeg cannot decode is :class:`AudioUndecodable`. Both are notes
on the record's caption, never record errors: the frames still make a caption.
"""

from __future__ import annotations

import time

import numpy as np

from vidcap.probe import FrameError, ffmpeg_url, ffprobe, last_line, run

RATE = 16_000  # Whisper's and Qwen2.5-Omni's audio rate


class AudioProblem(Exception):
    """The record is captioned from its frames alone; ``note`` says why (``no audio`` or the decode error)."""

    note = "audio"


class NoAudio(AudioProblem):
    note = "no audio"


class AudioUndecodable(AudioProblem):
    note = "audio undecodable"


def has_audio(path: str, deadline: float) -> bool:
    """Whether the file has an audio stream (ffprobe's stream list; nothing is decoded)."""
    data, stderr, code = ffprobe(
        ffmpeg_url(path), deadline, "audio probe", "-show_streams", "-select_streams", "a"
    )
    if code != 0:
        raise AudioUndecodable(last_line(stderr, "ffprobe failed on the audio stream"))
    return bool(data.get("streams"))


def decode(path: str, start: float = 0.0, end: float | None = None, timeout: float = 600.0) -> np.ndarray:
    """The first audio stream's samples from ``start`` to ``end`` seconds (None: to the end) as 16 kHz mono
    float32 in [-1, 1]. A span past the track's end gives fewer samples, never padding."""
    deadline = time.monotonic() + timeout
    if not has_audio(path, deadline):
        raise NoAudio("no audio stream")
    span = ["-ss", f"{start:.6f}"] + ([] if end is None else ["-t", f"{max(0.0, end - start):.6f}"])
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *span, "-i", ffmpeg_url(path), "-map", "0:a:0"]
    cmd += ["-ac", "1", "-ar", str(RATE), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        proc = run(cmd, deadline, "audio decode")
    except FrameError as exc:
        raise AudioUndecodable(str(exc)) from None
    if proc.returncode != 0 or (proc.stderr and not proc.stdout):
        raise AudioUndecodable(last_line(proc.stderr, "ffmpeg could not decode the audio"))
    return np.frombuffer(proc.stdout, dtype="<f4").copy()
