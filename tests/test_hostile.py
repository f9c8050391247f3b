"""A corpus of broken and awkward inputs, all made here with ffmpeg: every record comes out, in order."""

import json
import shutil
import subprocess

import pytest
from helpers import CAPTIONED, make_video, run_snakemake, tiny_config, write_records

pytestmark = pytest.mark.slow

NASTY_NAMES = [
    "with space.mp4",
    "quote'single.mp4",
    'quote"double.mp4',
    "semi;colon.mp4",
    "$(touch PWNED).mp4",
    "-leading-dash.mp4",
    "视频 видео ビデオ.mp4",
    "back`tick`.mp4",
]


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True)


def build_corpus(work):
    clips = work / "clips"
    clips.mkdir()
    good = make_video(clips / "good.mp4", seconds=2, size="96x64")
    cases = []  # (video entry, expected reason fragment or None for a caption)

    (clips / "zero.mp4").write_bytes(b"")
    cases.append(("clips/zero.mp4", "empty file"))
    data = good.read_bytes()
    (clips / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    cases.append(("clips/truncated.mp4", "not a readable media file"))
    (clips / "text.mp4").write_text("this is not a video\n" * 50)
    cases.append(("clips/text.mp4", "not a readable media file"))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-c:a",
        "aac",
        "file:" + str(clips / "audio.mp4"),
    )
    cases.append(("clips/audio.mp4", "no video stream"))
    cases.append(("clips/missing.mp4", "missing file"))
    (clips / "folder.mp4").mkdir()
    cases.append(("clips/folder.mp4", "directory"))

    # awkward but valid
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10",
        "-t",
        "2",
        "-vf",
        "setpts='if(lt(N,10),N*0.05/TB,0.5/TB+(N-10)*0.2/TB)'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "file:" + str(clips / "vfr.mp4"),
    )
    make_video(clips / "rotated.mp4", seconds=1, size="96x64", extra=["-metadata:s:v", "rotate=90"])
    make_video(clips / "oneframe.mp4", seconds=0.1, size="64x48", rate=10)
    make_video(clips / "tenminutes.mp4", seconds=600, size="32x32", rate=2, source="testsrc")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=63x47:rate=10",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        "file:" + str(clips / "odd.mp4"),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10",
        "-t",
        "1",
        "-c:v",
        "libvpx-vp9",
        "-b:v",
        "100k",
        "file:" + str(clips / "clip.webm"),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "mandelbrot=size=64x48:rate=10",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "file:" + str(clips / "clip.mkv"),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "smptebars=size=64x48:rate=10",
        "-t",
        "1",
        "-c:v",
        "mpeg4",
        "file:" + str(clips / "clip.avi"),
    )
    for name in [
        "vfr.mp4",
        "rotated.mp4",
        "oneframe.mp4",
        "tenminutes.mp4",
        "odd.mp4",
        "clip.webm",
        "clip.mkv",
        "clip.avi",
    ]:
        cases.append((f"clips/{name}", None))
    for name in NASTY_NAMES:
        shutil.copy(good, clips / name)
        cases.append((f"clips/{name}", None))
    cases.append(("clips/good.mp4", None))
    cases.append(("clips/good.mp4", None))  # a duplicated record
    return cases


def test_hostile_corpus(tmp_path, tiny_model):
    cases = build_corpus(tmp_path)
    records = [
        {"video": [video], "conversation": [{"from": "human", "value": ""}], "n": i}
        for i, (video, _) in enumerate(cases)
    ]
    records.append({"video": [], "conversation": [{"from": "human", "value": ""}], "n": len(records)})
    cases.append((None, "no media"))
    write_records(tmp_path / "records.json", records)
    run_snakemake(tmp_path, tiny_config(tiny_model, shards=2))

    out = json.loads((tmp_path / "captions.json").read_text(encoding="utf-8"))
    assert [r["n"] for r in out] == list(range(len(cases)))  # records in == records out, in order
    for rec, (video, reason) in zip(out, cases):
        meta = rec["caption_meta"]
        if reason is None:
            assert meta["status"] in CAPTIONED, (video, meta)
            assert isinstance(rec["caption"], str)
        else:
            assert meta["status"] == "error" and rec["caption"] is None, (video, meta)
            assert reason in meta["error"], (video, meta["error"])
    assert not list(tmp_path.rglob("PWNED")), "a file name was run as a shell command"
