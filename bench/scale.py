"""Planning and merging at scale: 100k records in 1000 shards.

    .venv/bin/python bench/scale.py [--records 100000] [--shards 1000]

Times `snakemake -n` on vidcap (first run, which writes the shard files, and a second run with nothing
changed) and on a bare toy workflow with the same jobs (two per shard plus a merge): Snakemake's own floor,
measured in the same run. Then merges synthetic shard results for every record. Prints ratios and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcap.atomic import dumps_line  # noqa: E402
from vidcap.records import DEFAULT_KEYS, record_digest  # noqa: E402
from vidcap.shards import shard_ids, shard_of  # noqa: E402

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


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "_measure.py"), *cmd], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    if result["returncode"]:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result['stderr_tail']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vidcap-scale-"))
    keys = dict(DEFAULT_KEYS)
    records = [{"video": [f"clips/{i // 1000:03d}/clip_{i:06d}.mp4"], "conversation": [{"from": "human", "value": ""}],
                "id": i} for i in range(args.records)]
    with open(work / "records.jsonl", "w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(dumps_line(rec))
    print(f"{args.records} records, {args.shards} shards, in {work}")

    # Snakemake's floor: a toy workflow with the same jobs and existing source files
    toy = work / "toy"
    (toy / "shards").mkdir(parents=True)
    (toy / "Snakefile").write_text(TOY)
    (toy / "records.jsonl").write_text("x\n")
    for sid in shard_ids(args.shards):
        (toy / "shards" / f"{sid}.txt").write_text(sid)
    dry = [str(BIN / "snakemake"), "-n", "--quiet", "all", "--cores", "2", "--resources", "gpu=1"]
    floor = measure([*dry, "-s", str(toy / "Snakefile"), "--directory", str(toy), "--config", f"shards={args.shards}"])

    vc = [*dry, "-s", str(REPO / "Snakefile"), "--directory", str(work), "--config", "input=records.jsonl",
          f"shards={args.shards}", "model=none"]
    first = measure(vc)
    again = measure(vc)
    for name, r in (("toy workflow (floor)", floor), ("vidcap, first (writes shards)", first),
                    ("vidcap, unchanged", again)):
        print(f"snakemake -n  {name:<30} {r['seconds']:6.1f} s  {r['seconds'] / floor['seconds']:5.2f}x floor  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")

    # merge: synthetic results for every record, then the real merge in its own process
    results = work / "results" / "captions"
    results.mkdir(parents=True, exist_ok=True)
    handles = {sid: open(results / f"{sid}.jsonl", "w", encoding="utf-8") for sid in shard_ids(args.shards)}
    ids = shard_ids(args.shards)
    for rec in records:
        handles[ids[shard_of(rec, keys, args.shards)]].write(dumps_line(
            {"digest": record_digest(rec), "caption": "a synthetic caption " * 5,
             "caption_meta": {"status": "ok", "error": None, "frames": 16, "prompt_tokens": 900, "output_tokens": 40,
                              "finish_reason": "stop"}}))
    for handle in handles.values():
        handle.close()
    settings = {"shards": args.shards, "prompt": "Please describe the video in detail.", "keys": keys}
    code = ("import json,sys; sys.path.insert(0, sys.argv[1]); from vidcap.merge import merge_captions; "
            "merge_captions(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]), log=None)")
    files = [str(results / f"{sid}.jsonl") for sid in ids]
    merged = measure([sys.executable, "-c", code, str(REPO), str(work / "records.jsonl"), json.dumps(files),
                      str(work / "captions.json"), json.dumps(settings)])
    size = (work / "captions.json").stat().st_size / 2**20
    print(f"merge {args.records} records from {args.shards} shards: {merged['seconds']:.1f} s, "
          f"peak RSS {merged['peak_rss_mb']:.0f} MB (output {size:.0f} MB)")


if __name__ == "__main__":
    main()
