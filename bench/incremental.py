"""Incremental rebuilds at 10k records / 100 shards: how many jobs rerun after small edits.

    .venv/bin/python bench/incremental.py [--records 10000] [--shards 100] [--keep DIR]

Builds the whole workflow once (tiny synthetic videos, the tiny random-weight model on vLLM's CPU build,
so captions are gibberish), then, each on a copy of the built project: edit 1 record, add 10, delete 1,
and all three at once. For each it prints the jobs per rule a dry run would rerun next to the number of
shards the edit touches (the target: exactly those, plus the merge), and the dry run's time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.demo import make_clip  # noqa: E402
from vidcap.records import DEFAULT_KEYS  # noqa: E402
from vidcap.shards import shard_of  # noqa: E402

BIN = Path(sys.executable).parent
SOURCES = [
    "testsrc2",
    "mandelbrot",
    "smptebars",
    "rgbtestsrc",
    "testsrc",
    "yuvtestsrc",
    "pal75bars",
    "cellauto",
]


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--cores",
        "2",
        "--resources",
        "gpu=1",
        "--nocolor",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_jsonl(path: Path, records: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--keep", help="build in this folder (reused if already built)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="vidcap-incr-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = dict(DEFAULT_KEYS)

    sources = work / "sources"
    if not (work / "captions.jsonl").exists():
        sources.mkdir(exist_ok=True)
        for i, src in enumerate(SOURCES):
            make_clip(sources / f"s{i}.mp4", f"{src}=size=64x48:rate=4", 1, gop=250)
        clips = work / "clips"
        clips.mkdir(exist_ok=True)
        records = []
        for i in range(args.records + 10):  # 10 spare clips for the "add" edit
            link = clips / f"clip_{i:06d}.mp4"
            if not link.exists():
                link.symlink_to(sources / f"s{i % len(SOURCES)}.mp4")
            records.append(
                {"video": [f"clips/{link.name}"], "conversation": [{"from": "human", "value": ""}], "id": i}
            )
        write_jsonl(work / "records.jsonl", records[: args.records])
        write_jsonl(work / "spare.jsonl", records[args.records :])
        subprocess.run(
            [sys.executable, "-m", "vidcap", "tiny-model", str(work / "tiny-model")],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        config = {
            "input": "records.jsonl",
            "output": "captions.jsonl",
            "results": "results",
            "shards": args.shards,
            "model": str(work / "tiny-model"),
            "frames": {"max_frames": 4, "min_pixels": 3136, "max_pixels": 3136, "threads": 2},
            "sampling": {"max_tokens": 4, "temperature": 0.0},
            "engine": {
                "max_model_len": 2048,
                "dtype": "bfloat16",
                "enforce_eager": True,
                "cpu_kvcache_space_gb": 1,
                "threads": 2,
            },
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        snakemake(work)
        print(
            f"full build: {args.records} records, {args.shards} shards in {time.perf_counter() - start:.0f} s"
        )

    base = [json.loads(line) for line in (work / "records.jsonl").read_text().splitlines()]
    spare = [json.loads(line) for line in (work / "spare.jsonl").read_text().splitlines()]

    def edit_one(recs):
        recs[4321 % len(recs)]["conversation"] = [{"from": "human", "value": "edited"}]
        return recs, {shard_of(recs[4321 % len(recs)], keys, args.shards)}

    def add_ten(recs):
        return recs + spare, {shard_of(r, keys, args.shards) for r in spare}

    def delete_one(recs):
        gone = recs.pop(777 % len(recs))
        return recs, {shard_of(gone, keys, args.shards)}

    def all_three(recs):
        touched = set()
        for step in (edit_one, add_ten, delete_one):
            recs, more = step(recs)
            touched |= more
        return recs, touched

    print(f"{'edit':<22} {'frames':>7} {'caption':>8} {'merge':>6}   touched shards   dry run")
    for name, edit in [
        ("edit 1 record", edit_one),
        ("add 10 records", add_ten),
        ("delete 1 record", delete_one),
        ("all three", all_three),
    ]:
        copy = Path(tempfile.mkdtemp(prefix="vidcap-incr-copy-")) / "p"
        shutil.copytree(work, copy, symlinks=True)
        recs, touched = edit([dict(r) for r in base])
        write_jsonl(copy / "records.jsonl", recs)
        start = time.perf_counter()
        proc = snakemake(copy, "--dry-run")
        seconds = time.perf_counter() - start
        jobs = Counter(re.findall(r"^(?:local)?rule (\w+):$", proc.stdout + proc.stderr, flags=re.M))
        ok = jobs["extract_frames"] == jobs["caption_shard"] == len(touched) and jobs["merge_captions"] == 1
        print(
            f"{name:<22} {jobs['extract_frames']:>7} {jobs['caption_shard']:>8} {jobs['merge_captions']:>6}   "
            f"{len(touched):>14}   {seconds:5.1f} s  {'as targeted' if ok else 'MISMATCH'}"
        )
        shutil.rmtree(copy.parent)
    if not args.keep:
        print(f"(built project left in {work}; remove it when done)")


if __name__ == "__main__":
    main()
