"""Frame sampling on real (tiny) videos made by ffmpeg: faithfulness, odd inputs, errors, budget, cache.

The test videos encode their own frame number: 8 vertical stripes, stripe b white when bit b of the
frame number is set, so any decoded (and resized) frame says which source frame it is.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_records

from vidcap import budget, decode
from vidcap.frames import (
    FrameError,
    cache_key,
    cached_sample,
    ensure_frames,
    extract_frames,
    load_frames,
    load_image,
    sample_video,
    smart_resize,
)

STRIPES = "format=gray,geq=lum='255*mod(floor(N/pow(2\\,floor(X*8/W)))\\,2)'"
SMALL = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 4, "max_frames": 64}
BACKENDS = ["ffmpeg", "decord"]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


def counter_video(
    path: Path,
    frames: int = 40,
    rate: int = 10,
    size: str = "64x48",
    gop: int = 8,
    vf: str = "",
    extra: tuple = (),
    pix_fmt: str = "yuv420p",
) -> Path:
    """A clip whose frame n shows n in binary stripes (libx264 with B-frames, keyframe every ``gop``)."""
    chain = f"nullsrc=size={size}:rate={rate},{STRIPES}" + (f",{vf}" if vf else "")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        chain,
        "-frames:v",
        str(frames),
        "-pix_fmt",
        pix_fmt,
        "-c:v",
        "libx264",
        "-g",
        str(gop),
        "-sc_threshold",
        "0",
        *extra,
        "file:" + str(path),
    )
    return path


def frame_number(frame: np.ndarray, axis: int = 1) -> int:
    """Read the stripes back; axis 1: stripes along the width, 0: along the height (rotated)."""
    gray = frame.astype(float).mean(axis=2)
    length = gray.shape[axis]
    bits = []
    for b in range(8):
        pos = int((b + 0.5) * length / 8)
        line = gray[:, pos] if axis == 1 else gray[pos, :]
        bits.append(line.mean() > 128)
    return sum(1 << b for b, on in enumerate(bits) if on)


def numbers(array: np.ndarray, axis: int = 1) -> list[int]:
    return [frame_number(f, axis) for f in array]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {}
    m["cfr"] = counter_video(d / "cfr.mp4")  # 40 frames, 10 fps, 4 s
    # variable frame rate: frames 0-19 every 0.05 s, then every 0.25 s
    m["vfr"] = counter_video(
        d / "vfr.mp4",
        vf="settb=1/1000,setpts='if(lt(N,20),N*0.05,1+(N-20)*0.25)/TB'",
        extra=("-fps_mode", "vfr", "-video_track_timescale", "1000"),
    )
    m["rotated"] = _rotate(counter_video(d / "land.mp4", frames=10, size="96x48"), d / "portrait.mp4")
    m["sar"] = counter_video(d / "sar.mp4", frames=10, vf="setsar=2")
    m["odd"] = counter_video(d / "odd.mp4", frames=10, size="63x47", pix_fmt="yuv444p")
    m["10bit"] = counter_video(d / "tenbit.mp4", frames=10, pix_fmt="yuv420p10le")
    m["short"] = counter_video(d / "short.mp4", frames=3)
    m["one"] = counter_video(d / "one.mp4", frames=1)
    m["long_gop"] = counter_video(d / "long_gop.mp4", frames=200, rate=25, gop=25)
    m["ts"] = counter_video(d / "long_gop.ts", frames=200, rate=25, gop=25)  # starts at 1.4 s, no index
    m["mkv"] = counter_video(d / "long_gop.mkv", frames=200, rate=25, gop=25)
    m["offset"] = counter_video(  # time stamps start at 3 s: seeks must add the start time
        d / "offset.mp4", frames=200, rate=25, gop=25, extra=("-output_ts_offset", "3")
    )
    # broken inputs
    (d / "notes.mp4").write_text("this is not a video\n" * 10)
    m["not_media"] = d / "notes.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", "file:" + str(d / "audio.m4a")
    )
    m["audio_only"] = d / "audio.m4a"
    whole = counter_video(d / "faststart.mp4", frames=40, extra=("-movflags", "+faststart")).read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    m["truncated"] = d / "truncated.mp4"
    index_last = counter_video(d / "index_last.mp4", frames=40).read_bytes()  # moov after the frames
    (d / "truncated_index.mp4").write_bytes(index_last[: len(index_last) // 2])
    m["truncated_index"] = d / "truncated_index.mp4"
    garbled = bytearray(whole)
    rng = random.Random(1)
    for i in range(garbled.find(b"mdat") + 200, len(garbled)):
        garbled[i] = rng.randrange(256)
    (d / "garbled.mp4").write_bytes(bytes(garbled))
    m["garbled"] = d / "garbled.mp4"
    m["missing"] = d / "nowhere.mp4"
    return m


def _rotate(src: Path, dst: Path) -> Path:
    """Set the track's display matrix to a quarter turn (what phones write for portrait video)."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd") + 4 + 40
    identity = bytes.fromhex("000100000000000000000000000000000001000000000000000000000000000040000000")
    assert data[at : at + 36] == identity
    quarter = bytes.fromhex("000000000001000000000000ffff00000000000000000000000000000000000040000000")
    data[at : at + 36] = quarter
    dst.write_bytes(bytes(data))
    return dst


def reference_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame as ffmpeg shows it (autorotate on), for comparing orientation."""
    out = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            "file:" + str(path),
            "-vf",
            f"scale={width}:{height},format=rgb24",
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "pipe:",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


# -------------------------------------------------------------------------------- faithfulness
@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_match_their_timestamps(media, backend):
    frames, meta = sample_video(str(media["cfr"]), {**SMALL, "backend": backend, "fps": 2.0})
    assert frames.dtype == np.uint8 and frames.shape == (8, 56, 56, 3)
    # 8 samples evenly over 0..3.9 s; the frame shown at t is floor(t * 10)
    expected = [int(np.floor(t * 10 + 1e-6)) for t in np.linspace(0, 3.9, 8)]
    assert meta["frames_indices"] == expected
    assert numbers(frames) == expected
    assert meta["fps"] == pytest.approx(10) and meta["total_num_frames"] == 40
    assert meta["duration"] == pytest.approx(4.0)
    assert meta["timestamps"] == pytest.approx([i / 10 for i in expected])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_frame_when_fps_matches_source(media, backend):
    frames, meta = sample_video(str(media["cfr"]), {**SMALL, "backend": backend, "fps": 10.0})
    assert numbers(frames) == list(range(40)) == meta["frames_indices"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_sampling_seeks_and_stays_exact(media, backend):
    # 200 frames, keyframe every 25, 4 samples 66 frames apart: the ffmpeg backend seeks
    frames, meta = sample_video(str(media["long_gop"]), {**SMALL, "backend": backend, "fps": 0.5})
    assert len(frames) == 4
    assert numbers(frames) == meta["frames_indices"]
    assert meta["frames_indices"][0] == 0 and meta["frames_indices"][-1] == 199
    if backend == "ffmpeg":
        # runs: [0], [66] from keyframe 50, [132..199] from keyframe 125 (cheaper than a third seek)
        assert meta["decode_runs"] == 3 and meta["decoded_frames"] == 1 + 17 + 75


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["ts", "mkv", "offset"])
def test_other_containers_stay_exact(media, backend, container):
    # MPEG-TS seeks by byte position (may land late) and decord drops its first GOP: read from the start
    frames, meta = sample_video(str(media[container]), {**SMALL, "backend": backend, "fps": 0.5})
    assert meta["frames_indices"] == [0, 66, 132, 199]
    assert numbers(frames) == meta["frames_indices"]
    if container == "ts":
        assert meta["backend"] == "ffmpeg" and meta["decode_runs"] == 1
    else:
        assert meta["backend"] == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_uses_timestamps(media, backend):
    frames, meta = sample_video(str(media["vfr"]), {**SMALL, "backend": backend, "fps": 2.0})
    times = [n * 0.05 if n < 20 else 1 + (n - 20) * 0.25 for n in range(40)]
    assert meta["vfr"] is True
    assert meta["timestamps"] == pytest.approx([times[i] for i in meta["frames_indices"]], abs=1e-3)
    # evenly spaced in time, not in frame numbers: the slow second half gets most samples
    span = times[-1] - times[0]
    for ts, i in zip(np.linspace(0, span, len(frames)), meta["frames_indices"]):
        assert times[i] <= ts + 1e-6 and (i == 39 or times[i + 1] > ts + 1e-6)
    assert numbers(frames) == meta["frames_indices"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_metadata_gives_portrait_frames(media, backend):
    frames, meta = sample_video(
        str(media["rotated"]), {"backend": backend, "fps": 4.0, "min_pixels": 3136, "max_pixels": 12544}
    )
    assert meta["rotation"] % 180 == 90
    assert (meta["source_width"], meta["source_height"]) == (48, 96)
    assert meta["height"] > meta["width"]
    shown = reference_frames(media["rotated"], meta["width"], meta["height"])
    # the stripes now run down the frame; the decoded frame equals what ffmpeg displays
    assert numbers(frames, axis=0) == meta["frames_indices"]
    diff = np.abs(frames.astype(int) - shown[meta["frames_indices"]].astype(int)).mean()
    assert diff < 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_square_pixels_use_display_aspect(media, backend):
    frames, meta = sample_video(
        str(media["sar"]), {"backend": backend, "min_pixels": 3136, "max_pixels": 12544}
    )
    assert (meta["source_width"], meta["source_height"]) == (128, 48)
    assert meta["width"] / meta["height"] == pytest.approx(128 / 48, rel=0.25)
    assert numbers(frames) == meta["frames_indices"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["odd", "10bit"])
def test_odd_sizes_and_10_bit(media, backend, name):
    frames, meta = sample_video(str(media[name]), {**SMALL, "backend": backend})
    assert frames.dtype == np.uint8 and frames.shape[1:] == (meta["height"], meta["width"], 3)
    assert meta["height"] % 28 == 0 and meta["width"] % 28 == 0
    assert numbers(frames) == meta["frames_indices"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_clips_repeat_frames_to_an_even_count(media, backend):
    frames, meta = sample_video(str(media["short"]), {**SMALL, "backend": backend, "min_frames": 4})
    assert len(frames) == 4 and meta["distinct_frames"] == 3 and meta["repeated_frames"] == 1
    assert numbers(frames) == meta["frames_indices"] and sorted(set(meta["frames_indices"])) == [0, 1, 2]
    assert any("repeated" in note for note in meta["notes"])
    frames, meta = sample_video(str(media["one"]), {**SMALL, "backend": backend, "min_frames": 1})
    assert len(frames) == 2 and meta["frames_indices"] == [0, 0] and meta["repeated_frames"] == 1
    assert numbers(frames) == [0, 0]


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing", "missing file"),
        ("not_media", "not a readable media file"),
        ("audio_only", "no video stream"),
        ("truncated", "truncated file"),
        ("truncated_index", "truncated file"),
        ("garbled", "decode error"),
    ],
)
def test_each_failure_has_its_own_reason(media, name, reason):
    with pytest.raises(FrameError) as info:
        sample_video(str(media[name]), SMALL)
    assert str(info.value).startswith(reason), str(info.value)


@pytest.mark.parametrize(
    "name", ["cfr", "vfr", "rotated", "sar", "odd", "10bit", "short", "one", "ts", "mkv", "offset"]
)
def test_in_process_reading_equals_ffprobe(media, name):
    # a rotated video is left to ffprobe (vidcap.demux): PyAV shows only a frame's rotation
    fast = decode.probe(str(media[name]), time.monotonic() + 60)
    slow = decode.probe(str(media[name]), time.monotonic() + 60, in_process=False)
    assert fast.pop("reader") == ("ffprobe" if name == "rotated" else "pyav")
    assert slow.pop("reader") == "ffprobe"
    assert fast == slow


def test_timeout_is_a_reason(media):
    with pytest.raises(FrameError, match="^timeout"):
        sample_video(str(media["long_gop"]), {**SMALL, "timeout": 0.01})


def test_garbled_video_fails_under_decord_too(media):
    with pytest.raises(FrameError, match="decode error"):
        sample_video(str(media["garbled"]), {**SMALL, "backend": "decord"})


# ------------------------------------------------------------------------------------ budget
BUDGET = {
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 768,
    "min_pixels": 128 * 784,
    "max_pixels": 768 * 784,
    "total_pixels": None,
    "patch_factor": 28,
}


def test_budget_fps_first_lowers_fps_then_pixels():
    params = {**BUDGET, "reduce": "fps_first"}
    free = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": None})
    assert free["n_frames"] == 768 and free["vision_tokens"] > 100_000
    fps_cut = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": 20_000})
    assert (fps_cut["height"], fps_cut["width"]) == (free["height"], free["width"])
    assert 4 <= fps_cut["n_frames"] < 768 and fps_cut["vision_tokens"] <= 20_000
    assert fps_cut["n_frames"] % 2 == 0 and "lower fps" in fps_cut["notes"][0]
    px_cut = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": 500})
    assert px_cut["n_frames"] == 4 and px_cut["vision_tokens"] <= 500
    assert px_cut["height"] * px_cut["width"] < free["height"] * free["width"]
    with pytest.raises(budget.BudgetError, match="too long"):
        budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": 0})
    qwen3 = budget.plan_video(10, 1080, 1920, {**params, "patch_factor": 32, "max_vision_tokens": None})
    assert qwen3["height"] % 32 == 0 and qwen3["width"] % 32 == 0


def test_budget_pixels_first_shrinks_frames_then_lowers_fps():
    params = {**BUDGET, "reduce": "pixels_first"}
    free = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": None})
    # 768 frames fit 100k tokens once frames shrink (still above min_pixels): the fps stays
    px_cut = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": 100_000})
    assert px_cut["n_frames"] == 768 and px_cut["vision_tokens"] <= 100_000
    assert 128 * 784 <= px_cut["height"] * px_cut["width"] < free["height"] * free["width"]
    assert "smaller frames" in px_cut["notes"][0]
    # 20k tokens: frames at min_pixels (128 tokens a pair) and then fewer of them
    both = budget.plan_video(600, 1080, 1920, {**params, "max_vision_tokens": 20_000})
    assert (both["height"] // 28) * (both["width"] // 28) == pytest.approx(128, rel=0.1)
    assert both["n_frames"] == 20_000 // ((both["height"] // 28) * (both["width"] // 28)) * 2 // 2 * 2
    assert both["vision_tokens"] <= 20_000 and "lower fps" in both["notes"][0]
    # the fps_first order keeps full-size frames instead
    fps_cut = budget.plan_video(
        600, 1080, 1920, {**params, "reduce": "fps_first", "max_vision_tokens": 20_000}
    )
    assert fps_cut["n_frames"] < both["n_frames"] and fps_cut["height"] == free["height"]
    with pytest.raises(budget.BudgetError, match="frames.reduce"):
        budget.plan_video(600, 1080, 1920, {**params, "reduce": "fps", "max_vision_tokens": 20_000})


def test_pixels_first_size_matches_qwen_vl_utils():
    # qwen_vl_utils.fetch_video: max_pixels = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * 2), ...)
    qwen = pytest.importorskip("qwen_vl_utils.vision_process")
    for seconds, tokens in [(60, 24_000), (20, 9_000), (300, 120_000)]:
        plan = budget.plan_video(
            seconds, 720, 1280, {**BUDGET, "reduce": "pixels_first", "max_vision_tokens": tokens}
        )
        n = plan["n_frames"]
        cap = min(768 * 784, tokens * 784 / n * 2)
        assert cap > 128 * 784 * 1.05  # the range where qwen only shrinks frames
        assert (plan["height"], plan["width"]) == qwen.smart_resize(720, 1280, 28, 128 * 784, cap)


def test_frames_capped_at_the_source_frame_count(tmp_path):
    # qwen_vl_utils' smart_nframes: never more frames than the source has in the span
    params = {**BUDGET, "reduce": "pixels_first", "max_vision_tokens": None}
    assert budget.plan_video(10, 48, 64, params, source_frames=10)["n_frames"] == 10
    assert budget.plan_video(10, 48, 64, params, source_frames=11)["n_frames"] == 10  # even, as Qwen
    assert budget.plan_video(3, 48, 64, params, source_frames=3)["n_frames"] == 4  # the min_frames pad
    assert budget.plan_video(10, 48, 64, params)["n_frames"] == 20
    slow = counter_video(tmp_path / "one_fps.mp4", frames=10, rate=1, gop=4)
    frames, meta = sample_video(str(slow), {**SMALL, "fps": 2.0})
    assert len(frames) == 10 and meta["repeated_frames"] == 0
    assert numbers(frames) == list(range(10)) == meta["frames_indices"]
    assert any("no frame sent twice" in note for note in meta["notes"])


def test_sampled_video_fits_its_budget(media):
    frames, meta = sample_video(
        str(media["cfr"]), {"fps": 10.0, "min_pixels": 3136, "max_pixels": 12544, "max_vision_tokens": 100}
    )
    tokens = len(frames) // 2 * (frames.shape[1] // 28) * (frames.shape[2] // 28)
    assert tokens == meta["vision_tokens"] <= 100 and meta["budget_tokens"] == 100
    assert numbers(frames) == meta["frames_indices"]


def test_smart_resize_matches_qwen():
    qwen = pytest.importorskip("qwen_vl_utils.vision_process")
    for h, w, lo, hi in [
        (1080, 1920, 128 * 784, 768 * 784),
        (48, 64, 3136, 12544),
        (720, 1280, 3136, 200 * 784),
    ]:
        assert smart_resize(h, w, 28, lo, hi) == qwen.smart_resize(h, w, 28, lo, hi)
    with pytest.raises(FrameError, match="aspect ratio"):
        smart_resize(1, 500)


def test_plan_runs_dense_is_one_pass_sparse_seeks():
    keyframes = list(range(0, 1000, 250))
    assert decode.plan_runs(list(range(0, 1000, 12)), keyframes) == [(0, 996)]
    sparse = decode.plan_runs([0, 300, 310, 600, 990], keyframes)
    assert sparse == [(0, 0), (300, 310), (600, 600), (990, 990)]
    assert decode.decoded_frames(sparse, keyframes) == 1 + 61 + 101 + 241


# ------------------------------------------------------------------------------------- cache
def test_cache_is_reused_across_shards_and_duplicates(media, tmp_path):
    video = shutil.copy(media["cfr"], tmp_path / "clip.mp4")
    records = [{"video": "clip.mp4", "id": 1}, {"video": "clip.mp4", "id": 2}, {"video": "nowhere.mp4"}]
    write_records(tmp_path / "a.jsonl", records)
    write_records(tmp_path / "b.jsonl", [records[1]])
    settings = {
        "media_root": str(tmp_path),
        "keys": {},
        "frames": SMALL,
        "cache_dir": str(tmp_path / "cache"),
    }
    first = extract_frames(str(tmp_path / "a.jsonl"), str(tmp_path / "a.json"), settings, threads=2)
    a, b, missing = first["records"]
    assert a["error"] is None and a["videos"][0]["frames"] == b["videos"][0]["frames"]
    assert missing["error"] == "nowhere.mp4: missing file"
    assert len(list((tmp_path / "cache").rglob("*.mkv"))) == 1  # listed twice, extracted once
    moved = extract_frames(str(tmp_path / "b.jsonl"), str(tmp_path / "b.json"), settings)
    assert moved["records"][0]["videos"][0]["cached"] is True
    manifest = json.loads((tmp_path / "b.json").read_text())
    assert (
        manifest["records"][0]["videos"][0]["meta"]["frames_indices"]
        == a["videos"][0]["meta"]["frames_indices"]
    )
    assert (
        numbers(load_frames(manifest["records"][0]["videos"][0])) == a["videos"][0]["meta"]["frames_indices"]
    )
    # changing a frame parameter re-extracts; changing the timeout or threads does not
    key = cache_key(str(video), "video", SMALL)
    assert cache_key(str(video), "video", {**SMALL, "timeout": 5, "decoder_threads": 1}) == key
    assert cache_key(str(video), "video", {**SMALL, "fps": 1.0}) != key
    changed = extract_frames(
        str(tmp_path / "b.jsonl"), str(tmp_path / "b.json"), {**settings, "frames": {**SMALL, "fps": 1.0}}
    )
    assert changed["records"][0]["videos"][0]["cached"] is False
    # touching the file (new mtime) re-extracts too
    os.utime(video, ns=(1, 1))
    assert cache_key(str(video), "video", SMALL) != key
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_failed_extraction_leaves_no_cache_entry(media, tmp_path):
    with pytest.raises(FrameError):
        cached_sample(str(media["garbled"]), "video", SMALL, tmp_path)
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])
def test_images_resized_and_cached(tmp_path, suffix):
    from PIL import Image

    path = tmp_path / f"pic.{suffix}"
    pixels = np.zeros((300, 500, 3), np.uint8)
    pixels[:, :250] = (250, 10, 10)
    Image.fromarray(pixels).save(path)
    params = {"image_min_pixels": 4 * 784, "image_max_pixels": 64 * 784, "cache_codec": "ffv1"}  # lossless
    array, meta = load_image(str(path), params)
    assert array.shape == (meta["height"], meta["width"], 3)
    assert meta["height"] % 28 == 0 and meta["width"] % 28 == 0 and meta["height"] * meta["width"] <= 64 * 784
    assert (meta["source_width"], meta["source_height"]) == (500, 300)
    assert (
        array[:, : meta["width"] // 2 - 2, 0].mean() > 200
        and array[:, meta["width"] // 2 + 2 :, 0].mean() < 30
    )
    entry = cached_sample(str(path), "image", params, tmp_path / "cache")
    again = cached_sample(str(path), "image", params, tmp_path / "cache")
    assert entry["cached"] is False and again["cached"] is True
    assert np.array_equal(load_frames(again), array)


def test_image_errors(tmp_path):
    (tmp_path / "fake.png").write_text("no pixels here")
    with pytest.raises(FrameError, match="^not an image file"):
        load_image(str(tmp_path / "fake.png"), {})
    with pytest.raises(FrameError, match="^missing file"):
        load_image(str(tmp_path / "gone.jpg"), {})


def test_pick_expression_selects_exactly_the_picks(tmp_path):
    # 300 picks: a flat eq()+eq()+... chain this long fails to parse in ffmpeg
    video = counter_video(tmp_path / "many.mp4", frames=600, rate=50, gop=600, size="32x16")
    info = decode.probe(str(video), deadline=time.monotonic() + 60)
    picks = list(range(0, 600, 2))
    got = {}
    decode.decode_ffmpeg(
        str(video),
        info,
        picks,
        56,
        28,
        lambda i, f: got.__setitem__(i, frame_number(f)),
        time.monotonic() + 60,
    )
    assert [got[i] % 256 for i in picks] == [i % 256 for i in picks]


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_cache_file_equals_in_memory_frames(media, tmp_path, backend):
    # 3-frame clip: repeats must stream too; a lossless cache codec gives back the very pixels
    params = {**SMALL, "backend": backend, "min_frames": 6, "cache_codec": "ffv1"}
    frames, meta = sample_video(str(media["short"]), params)
    entry = cached_sample(str(media["short"]), "video", params, tmp_path)
    stored = load_frames(entry)
    assert stored.shape == frames.shape and np.array_equal(stored, frames)
    assert entry["meta"]["frames_indices"] == meta["frames_indices"] == [0, 0, 0, 1, 1, 2]  # t = 0..0.2 s


@pytest.mark.parametrize("into_file", [False, True])
def test_timeout_while_decoding_kills_ffmpeg(media, tmp_path, into_file):
    info = decode.probe(str(media["long_gop"]), time.monotonic() + 60)
    with open(tmp_path / "frames.raw", "wb") as sink, pytest.raises(FrameError, match="^timeout: decoding"):
        decode.decode_ffmpeg(
            str(media["long_gop"]),
            info,
            list(range(200)),
            56,
            56,
            lambda i, f: None,
            deadline=time.monotonic(),
            sink=sink if into_file else None,
        )


# ------------------------------------------------------------------------ missing cache, paths
def test_ensure_frames_extracts_a_deleted_cache_again(media, tmp_path):
    video = shutil.copy(media["cfr"], tmp_path / "clip.mp4")
    write_records(tmp_path / "s.jsonl", [{"video": "clip.mp4"}, {"video": "gone.mp4"}])
    settings = {
        "media_root": str(tmp_path),
        "keys": {},
        "frames": SMALL,
        "cache_dir": str(tmp_path / "cache"),
    }
    entry, missing = extract_frames(str(tmp_path / "s.jsonl"), str(tmp_path / "s.json"), settings)["records"]
    first = numbers(load_frames(entry["videos"][0]))
    shutil.rmtree(tmp_path / "cache")  # a user frees disk space; the prompt then changes
    with pytest.raises(FileNotFoundError):
        load_frames(entry["videos"][0])
    again = ensure_frames(entry, settings)
    assert again is entry and entry["error"] is None and entry["videos"][0]["cached"] is False
    assert numbers(load_frames(entry["videos"][0])) == first
    assert ensure_frames(missing, settings) == missing  # an error entry stays as it is
    # the video itself deleted as well: the record's error, not a traceback
    shutil.rmtree(tmp_path / "cache")
    os.unlink(video)
    ensure_frames(entry, settings)
    assert entry["error"] == "clip.mp4: missing file" and entry["videos"][0]["error"] == "missing file"


def test_cache_files_cut_short_are_extracted_again(media, tmp_path):
    """Cache files are not fsynced: after a power loss a renamed .npy or sidecar can be empty or short;
    such an entry counts as missing, for cached_sample and for the caption job's ensure_frames."""
    video = str(media["cfr"])
    entry = cached_sample(video, "video", SMALL, tmp_path)
    first = numbers(load_frames(entry))
    array, sidecar = Path(entry["frames"]), Path(entry["frames"]).with_suffix(".json")
    assert cached_sample(video, "video", SMALL, tmp_path)["cached"] is True
    for damage in (lambda: array.write_bytes(array.read_bytes()[:-1]), lambda: array.write_bytes(b"")):
        damage()
        assert cached_sample(video, "video", SMALL, tmp_path)["cached"] is False
        assert numbers(load_frames(entry)) == first
    sidecar.write_text('{"fps": 2')
    assert cached_sample(video, "video", SMALL, tmp_path)["cached"] is False
    array.write_bytes(b"")
    record = {"videos": [entry], "images": [], "error": None}
    settings = {"cache_dir": str(tmp_path), "frames": SMALL}
    assert ensure_frames(record, settings)["videos"][0]["cached"] is False
    assert numbers(load_frames(entry)) == first


def test_media_root_only_refuses_paths_that_leave_it(media, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(media["cfr"], root / "in.mp4")
    outside = shutil.copy(media["cfr"], tmp_path / "out.mp4")
    records = [
        {"video": "in.mp4"},
        {"video": str(outside)},
        {"video": "../out.mp4"},
        {"video": "sub/../../out.mp4"},
        {"video": "~/out.mp4"},
        {"video": "sub/../in.mp4"},
    ]
    write_records(tmp_path / "s.jsonl", records)
    settings = {"media_root": str(root), "keys": {}, "frames": SMALL, "cache_dir": str(tmp_path / "cache")}
    loose = extract_frames(str(tmp_path / "s.jsonl"), str(tmp_path / "a.json"), settings)["records"]
    assert [r["error"] is None for r in loose] == [True, True, True, True, False, True]  # default: off
    strict = extract_frames(
        str(tmp_path / "s.jsonl"), str(tmp_path / "b.json"), {**settings, "media_root_only": True}
    )["records"]
    assert [r["error"] is None for r in strict] == [True, False, False, False, False, True]
    assert "refused by media_root_only" in strict[1]["error"] and "absolute path" in strict[1]["error"]
    assert "climbs out of media_root" in strict[3]["error"] and "(~)" in strict[4]["error"]
