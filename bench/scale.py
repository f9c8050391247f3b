"""Planning and merging at scale: 100k records in 1000 shards.

    .venv/bin/python bench/scale.py [--records 100000] [--shards 1000] [--repeat 3] [--repo DIR] [--no-merge]

Times `snakemake -n` on vidcap (first run, which writes the shard files; a second run with nothing changed;
a run after one video was replaced in place) and on a bare toy workflow with the same jobs (two per shard plus
a merge): Snakemake's own floor, measured in the same run; and on the same toy whose per-shard rules use
vidcap's rule features (script:, log:, benchmark:, params), the floor for rules shaped like vidcap's. Each figure is the best of ``--repeat`` runs, wall
time and CPU time (user + system of the whole process tree): on a machine shared with other jobs the CPU time
is the steadier of the two. ``--repo`` measures another checkout's Snakefile (e.g. the main branch, for a
before/after). Then the parse-time cost of the media stamps alone (a stat per media file), and the merge of
synthetic shard results for every record. Prints ratios and peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap import shards
from vidcap.atomic import dumps_line
from vidcap.records import DEFAULT_KEYS, record_digest, resolve_media
from vidcap.shards import shard_ids, shard_of

BIN = Path(sys.executable).parent
TOY = """
SHARDS = [f"{i:04d}" for i in range(int(config["shards"]))]
rule all:
    input: "merged.txt"
rule frames:
    input: "shards/{shard}.txt"
    output: "frames/{shard}.txt"
    shell: "cp {input} {output}"
rule caption:
    input: "frames/{shard}.txt"
    output: "captions/{shard}.txt"
    resources: gpu=1
    shell: "cp {input} {output}"
rule merge:
    input: "records.jsonl", expand("captions/{shard}.txt", shard=SHARDS)
    output: "merged.txt"
    shell: "cat {input} > {output}"
"""
# the same DAG with vidcap's per-job rule features: script:, log:, benchmark:, params. Snakemake reads a
# script's source for every job (to spot code changes), which a shell: rule does not pay
TOY_SCRIPT = TOY
for _name in ("frames", "caption"):
    TOY_SCRIPT = TOY_SCRIPT.replace(
        '    shell: "cp {input} {output}"',
        f'    params: settings={{"a": 1}}\n    log: "logs/{_name}/{{shard}}.log"\n'
        f'    benchmark: "bench/{_name}/{{shard}}.tsv"\n    script: "copy.py"',
        1,
    )


def measure(cmd: list[str]) -> dict:
    """Wall time and peak RSS (from _measure.py) and CPU time of the whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "_measure.py"), *cmd],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout)
    if result["returncode"]:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result['stderr_tail']}")
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def best(runs: list[dict]) -> dict:
    return {
        "seconds": min(r["seconds"] for r in runs),
        "cpu": min(r["cpu"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def make_records(work: Path, n: int, with_media: bool) -> list[dict]:
    records = [
        {
            "video": [f"clips/{i // 1000:03d}/clip_{i:06d}.mp4"],
            "conversation": [{"from": "human", "value": ""}],
            "id": i,
        }
        for i in range(n)
    ]
    with open(work / "records.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(dumps_line(rec) for rec in records)
    if with_media:  # small stand-ins: a stat costs the same whatever the size
        for rec in records:
            path = work / rec["video"][0]
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True)
            path.write_bytes(b"%d" % rec["id"])
    return records


def plan_times(work: Path, repo: Path, n_shards: int, repeat: int) -> dict[str, dict]:
    """Best-of-``repeat`` dry runs: toy floors, vidcap first run, unchanged, after one video replaced."""
    dry = [str(BIN / "snakemake"), "-n", "--quiet", "all", "--cores", "2", "--resources", "gpu=1"]
    toy = work / "toy"
    (toy / "shards").mkdir(parents=True)
    (toy / "Snakefile").write_text(TOY)
    (toy / "records.jsonl").write_text("x\n")
    for sid in shard_ids(n_shards):
        (toy / "shards" / f"{sid}.txt").write_text(sid)
    (toy / "Snakefile.script").write_text(TOY_SCRIPT)
    (toy / "copy.py").write_text("import shutil\nshutil.copy(snakemake.input[0], snakemake.output[0])\n")
    toy_cmd = [*dry, "-s", str(toy / "Snakefile"), "--directory", str(toy), "--config", f"shards={n_shards}"]
    script_cmd = [
        *dry,
        "-s",
        str(toy / "Snakefile.script"),
        "--directory",
        str(toy),
        "--config",
        f"shards={n_shards}",
    ]
    vc = [*dry, "-s", str(repo / "Snakefile"), "--directory", str(work), "--config", "input=records.jsonl"]
    vc += [f"shards={n_shards}", "model=none"]
    runs: dict[str, list] = {"floor": [], "script": [], "first": [], "unchanged": [], "replaced": []}
    clip = work / "clips" / "000" / "clip_000007.mp4"
    for i in range(repeat):
        runs["floor"].append(measure(toy_cmd))
        runs["script"].append(measure(script_cmd))
        shutil.rmtree(work / "results", ignore_errors=True)
        shutil.rmtree(work / ".snakemake", ignore_errors=True)
        runs["first"].append(measure(vc))
        runs["unchanged"].append(measure(vc))
        if clip.exists():
            clip.write_bytes(b"replaced %d" % i)
            runs["replaced"].append(measure(vc))
    return {name: best(r) for name, r in runs.items() if r}


def stat_cost(work: Path, records: list[dict]) -> dict:
    """The media stamps alone: resolving and stat'ing every record's video, and the unchanged-input check."""
    paths = [resolve_media(rec["video"][0], ".") for rec in records]
    state = json.loads((work / "results" / "shards" / shards.STATE_FILE).read_text())
    here = os.getcwd()
    os.chdir(work)  # media paths are relative to the workflow's working directory, as in a run
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        shards.media_stamp(paths)
        stamp = (time.perf_counter() - t0, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        assert shards._media_unchanged(Path("results") / "shards", state.get("index"))
        check = (time.perf_counter() - t0, time.process_time() - c0)
    finally:
        os.chdir(here)
    return {"stat": stamp, "check": check}


def merge_time(work: Path, records: list[dict], n_shards: int) -> None:
    """Synthetic results for every record, then the real merge in its own process."""
    keys = dict(DEFAULT_KEYS)
    results = work / "results" / "captions"
    results.mkdir(parents=True, exist_ok=True)
    ids = shard_ids(n_shards)
    meta = {"status": "ok", "error": None, "frames": 16, "prompt_tokens": 900, "output_tokens": 40}
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(results / f"{sid}.jsonl", "w", encoding="utf-8")) for sid in ids]
        for rec in records:
            line = {"digest": record_digest(rec), "caption": "a synthetic caption " * 5, "caption_meta": meta}
            handles[shard_of(rec, keys, n_shards)].write(dumps_line(line))
    settings = {"shards": n_shards, "prompt": "Please describe the video in detail.", "keys": keys}
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]); from vidcap.merge import merge_captions; "
        "merge_captions(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]), log=None)"
    )
    files = [str(results / f"{sid}.jsonl") for sid in ids]
    merged = measure(
        [sys.executable, "-c", code, str(REPO), str(work / "records.jsonl"), json.dumps(files),
         str(work / "captions.json"), json.dumps(settings)]
    )  # fmt: skip
    size = (work / "captions.json").stat().st_size / 2**20
    print(
        f"merge {len(records)} records from {n_shards} shards: {merged['seconds']:.1f} s, "
        f"peak RSS {merged['peak_rss_mb']:.0f} MB (output {size:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose Snakefile is measured")
    parser.add_argument("--no-media", action="store_true", help="leave the videos missing (no files made)")
    parser.add_argument("--no-merge", action="store_true", help="skip the merge timing")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vidcap-scale-"))
    t0 = time.perf_counter()
    records = make_records(work, args.records, not args.no_media)
    print(
        f"{args.records} records, {args.shards} shards, {os.cpu_count()} CPUs, Snakefile of {args.repo}, in {work}"
    )
    print(f"  ({'no media files' if args.no_media else 'one media file per record'}, made in "
          f"{time.perf_counter() - t0:.1f} s; best of {args.repeat})")  # fmt: skip
    times = plan_times(work, args.repo.resolve(), args.shards, args.repeat)
    floor = times["floor"]
    labels = {
        "floor": "toy workflow (floor)",
        "script": "toy with script: rules",
        "first": "vidcap, first (writes shards)",
        "unchanged": "vidcap, unchanged",
        "replaced": "vidcap, one video replaced",
    }
    for name, r in times.items():
        print(
            f"snakemake -n  {labels[name]:<30} {r['seconds']:6.1f} s {r['seconds'] / floor['seconds']:5.2f}x floor"
            f"   CPU {r['cpu']:6.1f} s {r['cpu'] / floor['cpu']:5.2f}x floor   peak RSS {r['peak_rss_mb']:4.0f} MB"
        )
    if args.repo.resolve() == REPO and (work / "results" / "shards" / shards.STATE_FILE).exists():
        cost = stat_cost(work, records)
        for name, what in (("stat", "stat of every media file"), ("check", "unchanged-input media check")):
            wall, cpu = cost[name]
            print(
                f"{what:<30} {wall:6.2f} s wall, {cpu:5.2f} s CPU, {wall / args.records * 1e6:5.1f} us per record"
            )
    if not args.no_merge:
        merge_time(work, records, args.shards)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
