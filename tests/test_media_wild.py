"""Clips as they come from the wild: stream-copied cuts with edit lists, AVI with B-frames and empty
packets, fragmented MP4, MPEG-TS, open GOP, HEVC 10-bit, VP9.

Every clip shows its frame number in its pixels (see test_frames.py). The reference is what a player
shows: ``ffmpeg -i clip`` re-encoded losslessly (FFV1, every frame kept with its time stamp). The
sampled frames must be the reference frames on screen at evenly spaced times over the reference's
own timeline, and no clip a player plays to its end may be called truncated.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_frames import STRIPES, counter_video, ffmpeg, numbers

from vidcap import decode
from vidcap.frames import FrameError, cached_sample, load_frames, sample_video

SMALL = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 4, "max_frames": 256, "min_frames": 4}


def encode(path: Path, codec: list[str], frames: int = 150, pix_fmt: str = "yuv420p", extra=()) -> Path:
    """A 25 fps counter clip with any encoder (``codec``: its ffmpeg options)."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"nullsrc=size=64x48:rate=25,{STRIPES}",
        *extra,
        "-frames:v",
        str(frames),
        "-pix_fmt",
        pix_fmt,
        *codec,
        "file:" + str(path),
    )
    return path


def stream_copy(src: Path, dst: Path, *cut: str) -> Path:
    """How clippers trim: seek on the input, copy the packets (MP4/MOV get an edit list)."""
    ffmpeg(*cut, "-i", "file:" + str(src), "-c", "copy", "file:" + str(dst))
    return dst


@pytest.fixture(scope="module")
def wild(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wild")
    x264 = ["-c:v", "libx264", "-g", "25", "-sc_threshold", "0", "-bf", "3"]
    src = encode(d / "src.mp4", x264)
    og = encode(
        d / "open_gop.mp4",
        [
            "-c:v",
            "libx264",
            "-bf",
            "3",
            "-x264-params",
            "open-gop=1:keyint=24:min-keyint=24:scenecut=0:b-adapt=0:bframes=2",
        ],
    )
    hevc = encode(
        d / "hevc10.mkv",
        ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:min-keyint=25:open-gop=1:scenecut=0"],
        pix_fmt="yuv420p10le",
    )
    return {
        "mp4_edit_list": stream_copy(src, d / "cut.mp4", "-ss", "1.3"),
        "mov_edit_list": stream_copy(src, d / "cut.mov", "-ss", "1.3", "-t", "2"),
        "open_gop": og,
        "open_gop_cut": stream_copy(og, d / "open_gop_cut.mp4", "-ss", "1.3"),
        "avi_mpeg4_bframes": encode(
            d / "mpeg4.avi",
            ["-c:v", "mpeg4", "-bf", "2", "-g", "12", "-q:v", "2", "-c:a", "libmp3lame", "-shortest"],
            frames=75,
            extra=("-f", "lavfi", "-i", "sine=duration=3"),
        ),
        "fragmented_mp4": encode(
            d / "frag.mp4", [*x264, "-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
        ),
        "mpeg_ts": encode(d / "clip.ts", x264),
        "hevc_10bit_mkv": hevc,
        "hevc_cut_mkv": stream_copy(hevc, d / "hevc_cut.mkv", "-ss", "1.3"),
        # MPEG-TS keeps the leading RASL picture's time stamp; the decoder drops the picture
        "hevc_cut_ts": stream_copy(hevc, d / "hevc_cut.ts", "-ss", "1.3"),
        "vp9_webm": encode(
            d / "clip.webm", ["-c:v", "libvpx-vp9", "-g", "25", "-deadline", "realtime", "-cpu-used", "8"]
        ),
    }


@functools.cache
def played(path: Path) -> tuple[list[int], list[float]]:
    """Frame numbers and times (from the first frame) of what ``ffmpeg -i path`` plays, via a
    lossless re-encode of it."""
    ref = path.with_name(path.name + ".ffv1.mkv")
    ffmpeg(
        "-i",
        "file:" + str(path),
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-c:v",
        "ffv1",
        "file:" + str(ref),
    )
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            "file:" + str(ref),
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:",
        ],
        capture_output=True,
        check=True,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 48, 64, 3)
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "json",
            "file:" + str(ref),
        ],
        capture_output=True,
        check=True,
    ).stdout
    times = sorted(float(p["pts_time"]) for p in json.loads(out)["packets"])
    assert len(times) == len(frames)
    return numbers(frames), [t - times[0] for t in times]


def expected(ref_numbers: list[int], ref_times: list[float], n: int) -> tuple[list[int], list[float]]:
    """The reference frames on screen at n evenly spaced times over the reference's timeline."""
    picks = [
        max(i for i, t in enumerate(ref_times) if t <= target + 1e-4)
        for target in np.linspace(0, ref_times[-1], n)
    ]
    return [ref_numbers[i] for i in picks], [ref_times[i] for i in picks]


WILD = [
    "mp4_edit_list",
    "mov_edit_list",
    "open_gop",
    "open_gop_cut",
    "avi_mpeg4_bframes",
    "fragmented_mp4",
    "mpeg_ts",
    "hevc_10bit_mkv",
    "hevc_cut_mkv",
    "hevc_cut_ts",
    "vp9_webm",
]


@pytest.mark.parametrize("backend", ["ffmpeg", "decord"])
@pytest.mark.parametrize("fps", [0.7, 25.0])
@pytest.mark.parametrize("name", WILD)
def test_sampled_frames_are_the_frames_a_player_shows(wild, name, fps, backend):
    ref_numbers, ref_times = played(wild[name])
    frames, meta = sample_video(str(wild[name]), {**SMALL, "fps": fps, "backend": backend})
    assert meta["total_num_frames"] == len(ref_numbers)  # the frames a player shows, no more
    want_numbers, want_times = expected(ref_numbers, ref_times, len(frames))
    assert numbers(frames) == want_numbers
    assert meta["timestamps"] == pytest.approx(want_times, abs=2e-3)
    assert meta["duration"] == pytest.approx(ref_times[-1] + 0.04, abs=0.01)


@pytest.mark.parametrize("fps", [0.7, 25.0])
@pytest.mark.parametrize(
    "name", ["mp4_edit_list", "open_gop", "avi_mpeg4_bframes", "mpeg_ts", "hevc_10bit_mkv", "hevc_cut_ts"]
)
def test_cache_file_written_by_ffmpeg_holds_the_same_frames(wild, name, fps, tmp_path):
    # into the cache ffmpeg writes the frames itself (seeks, reads from the start, the decoder's own
    # frame times after a dropped picture): the file must hold what the in-memory path returns
    params = {**SMALL, "fps": fps, "cache_codec": "ffv1"}  # lossless: the same pixels back
    frames, meta = sample_video(str(wild[name]), params)
    entry = cached_sample(str(wild[name]), "video", params, tmp_path)
    assert entry["meta"]["frames_indices"] == meta["frames_indices"]
    assert np.array_equal(load_frames(entry), frames)


@pytest.mark.parametrize("name", WILD)
def test_in_process_reading_equals_ffprobe(wild, name):
    # PyAV's own (newer) FFmpeg reads the packets in this process; ffprobe, of the ffmpeg that
    # decodes, is the reference: the same frame times, keyframes, sizes and flags. AVI is left to
    # ffprobe (its demuxer gives B-frame streams' packets other time stamps in newer FFmpeg)
    fast = decode.probe(str(wild[name]), time.monotonic() + 60)
    slow = decode.probe(str(wild[name]), time.monotonic() + 60, in_process=False)
    assert fast.pop("reader") == ("ffprobe" if name.startswith("avi") else "pyav")
    assert slow.pop("reader") == "ffprobe"
    assert fast == slow


def test_edit_list_cut_starts_at_the_frame_shown_at_the_edit(wild):
    # source frame n shows n; -ss 1.3 at 25 fps: a player starts at frame 33 (t 1.32), 117 frames
    frames, meta = sample_video(str(wild["mp4_edit_list"]), {**SMALL, "fps": 50.0})
    got = numbers(frames)
    assert meta["total_num_frames"] == 117 and len(frames) == 116  # capped at the source's frames (even)
    assert got[0] == 33 and got[-1] == 149 and got == sorted(set(got))  # no frame twice
    assert meta["timestamps"] == pytest.approx([i * 0.04 for i in meta["frames_indices"]], abs=1e-6)


@pytest.mark.parametrize("name", ["open_gop", "hevc_10bit_mkv"])
def test_open_gop_frames_before_a_keyframe(wild, name):
    # the frames just before an open-GOP keyframe are decoded after it and reference the GOP before:
    # a run that seeks must start early enough for them
    info = decode.probe(str(wild[name]), time.monotonic() + 60)
    assert info["open_gop"] is True
    ref_numbers, _ = played(wild[name])
    wanted = [k - 1 for k in info["keyframes"][1::3]]  # ~75 frames apart: each one a seek
    got = {}
    stats = decode.decode_ffmpeg(
        str(wild[name]), info, wanted, 64, 48, lambda i, f: got.__setitem__(i, f), time.monotonic() + 60
    )
    assert stats["runs"] > 1  # it did seek
    assert [numbers(got[i][None])[0] for i in wanted] == [ref_numbers[i] for i in wanted]


def test_a_frame_the_decoder_drops_is_never_sampled(wild):
    # the packets list a picture (pts 1.44 s) that the decoder cannot show: the frame times are then
    # read from the decoder, and sampling starts at the first frame it really shows
    info = decode.probe(str(wild["hevc_cut_ts"]), time.monotonic() + 60)
    assert len(info["times"]) == 126
    frames, meta = sample_video(str(wild["hevc_cut_ts"]), {**SMALL, "fps": 25.0})
    assert meta["frame_times"] == "decoder" and meta["total_num_frames"] == 125
    assert any("frame times read from the decoder" in note for note in meta["notes"])
    assert numbers(frames)[0] == 25 and meta["timestamps"][0] == 0.0
    missing = dict(info, pts=[p + 1 for p in info["pts"]])  # time stamps no frame has
    with pytest.raises(decode.FrameMismatch, match="decoder gave 0 of 2"):
        decode.decode_ffmpeg(
            str(wild["hevc_cut_ts"]), missing, [5, 6], 64, 48, lambda i, f: None, time.monotonic() + 60
        )


def test_avi_with_an_empty_packet_is_not_truncated(tmp_path):
    # a dropped frame with -fps_mode passthrough: the AVI muxer fills the slot with an empty packet,
    # so the index lists 76 entries and 75 frames are shown (the old check said "75 of 76 present")
    avi = counter_video(
        tmp_path / "gap.avi",
        frames=75,
        rate=25,
        vf="select='not(eq(n\\,10))'",
        extra=("-c:v", "mpeg4", "-bf", "2", "-fps_mode", "passthrough"),
    )
    frames, meta = sample_video(str(avi), {**SMALL, "fps": 25.0})
    shown = [n for n in range(76) if n != 10]
    assert meta["total_num_frames"] == 75 and len(frames) == 74  # capped at the frames shown, even
    assert numbers(frames) == [shown[i] for i in meta["frames_indices"]]


def test_really_truncated_stream_still_says_so(wild, tmp_path):
    whole = wild["mp4_edit_list"].read_bytes()
    cut = tmp_path / "half.mp4"
    ffmpeg(
        "-i",
        "file:" + str(wild["mp4_edit_list"]),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        "file:" + str(cut),
    )
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert len(whole) > 0
    with pytest.raises(FrameError, match="^truncated file: frames end at"):
        sample_video(str(cut), SMALL)
