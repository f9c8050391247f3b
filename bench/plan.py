"""How long ``vidcap plan`` takes on a big input: 100,000 records sharing a few real small videos.

    .venv/bin/python bench/plan.py                  # 100k records, exact, then the default sample
    .venv/bin/python bench/plan.py --records 20000 --videos 8

Each record lists 1 to 3 of ``--videos`` short H.264 clips (encoded here from ffmpeg's test sources) and
a third of them a prompt of their own, so records differ in media count, budget split and text. Probes
are kept per file (as in any plan run), so the time is vidcap's per-record work: reading and validating
the record, the budget split, the cache keys, the result-store key and its look-up, the text tokens.
Runs ``python -m vidcap plan`` as a user does, once exact (--exact above the record count) and once
with the default sample, and prints wall time and records per second as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_clips(folder: Path, n: int) -> list[str]:
    sizes = ["640x360", "1280x720", "854x480", "480x640"]
    names = []
    for i in range(n):
        name = f"clip{i}.mp4"
        source = f"testsrc2=size={sizes[i % len(sizes)]}:rate=25"
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                source,
                "-t",
                str(2 + i % 5),
                "-pix_fmt",
                "yuv420p",
                str(folder / name),
            ],
            check=True,
        )
        names.append(name)
    return names


def write_input(folder: Path, records: int, clips: list[str]) -> Path:
    rng = random.Random(0)
    path = folder / "records.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            record = {"id": i, "video": rng.sample(clips, rng.choice((1, 1, 2, 3)))}
            if i % 3 == 0:
                record["prompt"] = f"Describe clip set {i % 97}."
            handle.write(json.dumps(record) + "\n")
    return path


def run_plan(config: Path, *extra: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vidcap", "plan", "--configfile", str(config), "--json", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    summary = json.loads(proc.stdout)
    return {
        "wall_seconds": round(seconds, 2),
        "plan_seconds": summary["plan_seconds"],
        "planned_records": summary["planned"],
        "records_per_second": round(summary["planned"] / summary["plan_seconds"]),
        "probed_files": summary["probed_files"],
        "probe_ms_per_file": round(1000 * summary["probe_seconds"] / max(1, summary["probed_files"]), 1),
        "vision_tokens": summary["vision_tokens"],
        "vision_tokens_error": summary["vision_tokens_error"],
    }


def run_distinct(folder: Path, clips: list[str], n: int) -> dict:
    """Records whose videos are all different files (hard links: probed and keyed one by one)."""
    links = folder / "links"
    links.mkdir()
    with open(folder / "distinct.jsonl", "w", encoding="utf-8") as handle:
        for i in range(n):
            name = f"links/v{i}.mp4"
            (folder / name).hardlink_to(folder / clips[i % len(clips)])
            handle.write(json.dumps({"video": name}) + "\n")
    config = folder / "distinct.yaml"
    config.write_text(
        f"input: {folder / 'distinct.jsonl'}\nresults: {folder / 'results'}\n", encoding="utf-8"
    )
    return run_plan(config, "--exact", str(n))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument(
        "--distinct",
        type=int,
        default=2000,
        help="then a run of this many records, each its own file (hard links)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = make_clips(folder, args.videos)
        records = write_input(folder, args.records, clips)
        config = folder / "my.yaml"
        config.write_text(
            f"input: {records}\nresults: {folder / 'results'}\nkeys: {{prompt: prompt}}\n", encoding="utf-8"
        )
        exact = run_plan(config, "--exact", str(args.records))
        sampled = run_plan(config, "--exact", "0")
        distinct = run_distinct(folder, clips, args.distinct)
    relative = abs(sampled["vision_tokens"] - exact["vision_tokens"]) / exact["vision_tokens"]
    print(
        json.dumps(
            {
                "records": args.records,
                "videos": args.videos,
                "exact": exact,
                "sample": sampled,
                "distinct_files": distinct,
                "sample_off_by": f"{relative:.2%} (stated 95% error {sampled['vision_tokens_error'] / exact['vision_tokens']:.2%})",
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
