"""Synthetic demo data: short videos from ffmpeg's lavfi test sources and a record file."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from vidcap.atomic import write_json

# (file name, lavfi source, seconds): distinct patterns so frames differ between videos
DEMO_CLIPS = [
    ("testsrc2.mp4", "testsrc2=size=160x120:rate=10", 3),
    ("mandelbrot.mp4", "mandelbrot=size=160x120:rate=10", 2),
    ("smpte bars.mp4", "smptebars=size=160x120:rate=10", 2),
    ("life.mp4", "life=size=160x120:rate=10:mold=10:ratio=0.5", 3),
    ("rgb gradient.mp4", "rgbtestsrc=size=120x160:rate=10", 2),
    ("cellular.mp4", "cellauto=size=160x120:rate=10:rule=110", 2),
]


def make_clip(path: Path, source: str, seconds: float, gop: int = 10, extra: Sequence[str] = ()) -> Path:
    """Encode a lavfi source (e.g. ``testsrc2=size=160x120:rate=10``) to H.264, a keyframe every ``gop``
    frames; ``extra``: more output options. Argument list only, never a shell string. The demo, the
    tests and the benchmarks make their clips here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            source,
            "-t",
            str(seconds),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-g",
            str(gop),
            *extra,
            "file:" + str(path.resolve()),
        ],
        check=True,
    )
    return path


def make_demo(out_dir: str | Path) -> Path:
    """Write demo clips and ``records.json`` (with one missing video, to show an error record)."""
    out_dir = Path(out_dir)
    records = []
    for name, source, seconds in DEMO_CLIPS:
        clip = out_dir / "clips" / name
        if not clip.exists():
            make_clip(clip, source, seconds)
        records.append({"video": [f"clips/{name}"], "conversation": [{"from": "human", "value": ""}]})
    records.append(
        {
            "video": ["clips/missing.mp4"],
            "conversation": [{"from": "human", "value": ""}],
            "note": "this video does not exist: its record shows caption_meta.status = error",
        }
    )
    path = out_dir / "records.json"
    write_json(path, records)
    return path
