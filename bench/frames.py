"""Frame extraction benchmark: vidcap vs qwen_vl_utils.fetch_video (decord) vs a full ffmpeg decode.

    .venv/bin/python bench/frames.py            # 10 s 720p and 60 s 1080p
    .venv/bin/python bench/frames.py --long     # also 10 min 1080p (minutes of encoding and decoding)
    .venv/bin/python bench/frames.py --repeat 7 --baseline ../main   # medians; main's vidcap beside

Videos are made once with lavfi (testsrc2, libx264, keyframe every 250 frames) under --workdir.
Every method runs in its own process, so its peak RSS (the process plus its largest child, e.g. ffmpeg)
is its own. Wall times on a shared machine swing with the other load; CPU seconds (user + system of
the process and its children) are steadier, so both are printed with their ratios. Methods:
  floor         ffmpeg decodes every frame to nothing (the least any exact dense method can cost)
  anchor        qwen_vl_utils.fetch_video, decord backend (full-size decode, then torch resize)
  vidcap-ffmpeg vidcap.frames.cached_sample (what the frames job runs: ffmpeg writes the frames
                into the .npy cache file as they are decoded), ffmpeg backend, fps 2 (dense)
  vidcap-decord the same, decord backend
  sparse-ffmpeg / sparse-decord   the same with max_frames 32 (seeks when keyframes allow)
  windows       vidcap.long_frames.cached_long, long_video.mode windows at the defaults (256-frame windows
                at 2 fps, shots on: cuts from the scene-score branch of the same decode), the workflow's
                default token budget per window (48,640 vision tokens: max_model_len 51200 - 2048 - 512)
  windows-noshots  the same with shots off (no scene branch): windows minus this is shot detection's cost
The pixel check compares each method's frames with the anchor's where both took the same frame
index (vidcap takes the frame on screen at each time, qwen rounds to the nearest index, so some
indices differ by one); it prints the mean absolute difference and how many frames matched.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.demo import make_clip

VIDEOS = {  # name: (seconds, size)
    "10s-720p": (10, "1280x720"),
    "60s-1080p": (60, "1920x1080"),
    "10min-1080p": (600, "1920x1080"),
}
PIXELS = {"min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28}
METHODS = [
    "floor",
    "anchor",
    "vidcap-ffmpeg",
    "vidcap-decord",
    "sparse-ffmpeg",
    "sparse-decord",
    "windows",
    "windows-noshots",
]
WINDOW_BUDGET = (
    51200 - 2048 - 512
)  # the workflow's default vision tokens per prompt (frames.max_vision_tokens)


def make_video(path: Path, seconds: int, size: str) -> Path:
    if not path.exists():
        print(f"encoding {path.name} ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".tmp.mp4")
        make_clip(tmp, f"testsrc2=size={size}:rate=25", seconds, gop=250, extra=["-preset", "veryfast"])
        tmp.rename(path)
    return path


def floor_command(video: str) -> list[str]:
    """The floor: ffmpeg decodes every frame of the video stream to nothing."""
    return [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        "file:" + video,
        "-map",
        "0:v:0",
        "-f",
        "null",
        "-",
    ]


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + child) / 1024  # KiB on Linux


def cpu_seconds() -> float:
    own, child = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + child.ru_utime + child.ru_stime


def run_method(method: str, video: str, out: str) -> dict:
    """Run one method in this (fresh) process; save its frames to ``out``; return time and indices."""
    if method == "anchor":  # imports (torch for the anchor) happen once per job: not timed
        os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
        from qwen_vl_utils.vision_process import fetch_video
    else:
        if method.startswith("base-"):  # the same method with the baseline checkout's vidcap
            sys.path.insert(0, os.environ["VIDCAP_BENCH_BASELINE"])
            method = method[len("base-") :]
        from vidcap.frames import cached_sample
    started, cpu_started = time.perf_counter(), cpu_seconds()
    indices = None
    frames = None
    decoded = None
    if method == "floor":
        subprocess.run(
            floor_command(video),
            check=True,
        )
    elif method.startswith("windows"):
        frames, decoded = run_windows(video, out, shots=method == "windows")
    elif method == "anchor":
        video_tensor, meta = fetch_video(
            {"video": video, "fps": 2.0, **PIXELS, "total_pixels": 1e12}, return_video_metadata=True
        )
        frames = video_tensor.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        indices = meta["frames_indices"]
    else:
        kind, backend = method.split("-")
        # raw frames: the decoding is compared here; the cache codec's cost is bench/cache_codec.py's
        params = {**PIXELS, "backend": backend, "fps": 2.0, "max_vision_tokens": None, "cache_codec": "npy"}
        if kind == "sparse":
            params["max_frames"] = 32
        # as the workflow runs it: frames streamed into the cache, then read from there
        with tempfile.TemporaryDirectory(dir=Path(out).parent) as cache:
            entry = cached_sample(video, "video", params, Path(cache))
            os.replace(entry["frames"], out)
        meta = entry["meta"]
        frames = np.load(out, mmap_mode="r")
        indices = meta["frames_indices"]
        decoded = (
            f"{meta['decoded_frames']}/{meta['total_num_frames']} in {meta['decode_runs']} runs"
            if meta["decode_runs"]
            else None
        )
    seconds = time.perf_counter() - started
    if method == "anchor":
        np.save(out, np.ascontiguousarray(frames))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "peak_rss_mb": peak_rss_mb(),
        "indices": indices,
        "shape": list(frames.shape) if frames is not None else None,
        "decoded": decoded,
    }


def run_windows(video: str, out: str, shots: bool) -> tuple[np.ndarray, str]:
    """The windowed frames step on one video; the first window's frames are kept as ``out``."""
    from vidcap.config import defaults, with_defaults
    from vidcap.long_frames import cached_long

    params = with_defaults(
        "frames",
        {**PIXELS, "fps": 2.0, "max_vision_tokens": WINDOW_BUDGET, "patch_factor": 28, "cache_codec": "npy"},
    )
    lv = {**defaults("long_video"), "mode": "windows", "shots": shots}
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as cache:
        item = cached_long(video, params, lv, Path(cache))
        os.replace(item["windows"][0]["frames"], out)
    meta, wins = item["meta"], item["windows"]
    sent = sum(w["meta"]["sampled_frames"] for w in wins if "meta" in w)
    edges = ", ".join(f"{w['start']:.0f}" for w in wins[1:])
    decoded = f"{len(wins)} windows (edges {edges} s), {sent} frames, {len(meta['cuts'])} cuts"
    return np.load(out, mmap_mode="r"), decoded


def compare(a_path: Path, a_idx: list[int], b_path: Path, b_idx: list[int]) -> tuple[float | None, int]:
    a, b = np.load(a_path, mmap_mode="r"), np.load(b_path, mmap_mode="r")
    if a.shape[1:] != b.shape[1:]:
        return None, 0
    where = {idx: i for i, idx in enumerate(a_idx)}
    pairs = [(where[idx], j) for j, idx in enumerate(b_idx) if idx in where]
    if not pairs:
        return None, 0
    diffs = [np.abs(a[i].astype(np.int16) - b[j].astype(np.int16)).mean() for i, j in pairs]
    return float(np.mean(diffs)), len(pairs)


def _run_one(name: str, method: str, video: Path, workdir: Path) -> dict | None:
    out = workdir / f"{name}.{method}.npy"
    proc = subprocess.run(
        [sys.executable, __file__, "--run", method, str(video), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(f"{name} {method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name} {method}: {result['seconds']:.2f} s", file=sys.stderr, flush=True)
    return {**result, "out": out}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", action="store_true", help="also the 10 min 1080p video (slow on 2 cores)")
    parser.add_argument(
        "--anchor-long",
        action="store_true",
        help="run the anchor on the 10 min video too (holds every sampled frame at full size: "
        "~7.5 GB of uint8 frames plus float copies)",
    )
    parser.add_argument("--workdir", default="/tmp/vidcap-bench")
    parser.add_argument("--videos", help=f"comma-separated subset of {', '.join(VIDEOS)}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per method (medians reported; methods take turns)"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run each vidcap method with the vidcap package of another checkout (base-<method>), "
        "e.g. the main branch, in the same session",
    )
    parser.add_argument("--run", nargs=3, metavar=("METHOD", "VIDEO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_method(*args.run)))
        return

    load_before = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = [n for n in VIDEOS if args.long or n != "10min-1080p"]
    if args.videos:
        names = [n for n in names if n in args.videos.split(",")]
    methods = args.methods.split(",")
    if args.baseline:
        os.environ["VIDCAP_BENCH_BASELINE"] = str(Path(args.baseline).resolve())
        methods += [f"base-{m}" for m in methods if m.startswith(("vidcap-", "sparse-"))]
    rows = []
    for name in names:
        seconds, size = VIDEOS[name]
        video = make_video(workdir / f"{name}.mp4", seconds, size)
        results = {}
        for _rep in range(args.repeat):  # methods take turns, so a change in the machine's load hits all
            for method in methods:
                if method == "anchor" and name == "10min-1080p" and not args.anchor_long:
                    continue
                r = _run_one(name, method, video, workdir)
                if r is None:
                    continue
                done = results.setdefault(method, {**r, "all_seconds": [], "all_cpu": []})
                done.update({k: r[k] for k in ("indices", "shape", "decoded", "out")})
                done["all_seconds"].append(r["seconds"])
                done["all_cpu"].append(r["cpu_seconds"])
                done["seconds"] = float(np.median(done["all_seconds"]))
                done["cpu_seconds"] = float(np.median(done["all_cpu"]))
                done["peak_rss_mb"] = max(done["peak_rss_mb"], r["peak_rss_mb"])
        floor = results.get("floor", {}).get("seconds")
        floor_cpu = results.get("floor", {}).get("cpu_seconds")
        anchor = results.get("anchor")
        for method, r in results.items():
            diff, matched = (None, 0)
            if anchor and r["indices"] is not None and method != "anchor":
                diff, matched = compare(anchor["out"], anchor["indices"], r["out"], r["indices"])
            rows.append(
                {
                    "video": name,
                    "method": method,
                    "seconds": round(r["seconds"], 2),
                    "x_floor": round(r["seconds"] / floor, 2) if floor else None,
                    "x_anchor": round(r["seconds"] / anchor["seconds"], 2) if anchor else None,
                    "cpu_s": round(r["cpu_seconds"], 2),
                    "cpu_x_floor": round(r["cpu_seconds"] / floor_cpu, 2) if floor_cpu else None,
                    "cpu_x_anchor": round(r["cpu_seconds"] / anchor["cpu_seconds"], 2) if anchor else None,
                    "peak_rss_mb": round(r["peak_rss_mb"]),
                    "frames": r["shape"][0] if r["shape"] else None,
                    "size": f"{r['shape'][2]}x{r['shape'][1]}" if r["shape"] else None,
                    "mad_vs_anchor": None if diff is None else round(diff, 2),
                    "same_index": f"{matched}/{r['shape'][0]}"
                    if anchor and r["shape"] and method != "anchor"
                    else None,
                    "decoded": r["decoded"],
                }
            )
        for method in results:
            results[method]["out"].unlink(missing_ok=True)
    header = [
        "video",
        "method",
        "seconds",
        "x_floor",
        "x_anchor",
        "cpu_s",
        "cpu_x_floor",
        "cpu_x_anchor",
        "peak_rss_mb",
        "frames",
        "size",
        "mad_vs_anchor",
        "same_index",
        "decoded",
    ]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(header, widths)))
    # wall times on a shared machine mean little without the load they were measured under
    loads = [" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg())]
    print(
        f"load average (1, 5, 15 min): {loads[0]} at the start, {loads[1]} at the end; {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
