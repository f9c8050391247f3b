"""Caption jobs as a user runs them: time outside ``generate`` and peak memory against the shard size.

    .venv/bin/python bench/caption.py [--records 50 500 2000] [--frames 32] [--size 448x252]
                                      [--max-tokens 64] [--distinct 200]

Each shard size runs as a whole caption job in its own process, as Snakemake starts it: it starts its
own engine (the tiny random Qwen2.5-VL on the CPU build here; a column of its own), samples with the
default seeded sampling (temperature 0.7, a seed per record) and reads frames of a real size from the
frame cache: ``--frames`` frames of ``--size`` per record, synthetic noise written straight into the
cache (no decoding: the frames step has its own benchmark). Columns:

- engine: seconds to start the engine; generate: seconds inside the engine (adding requests, which
  includes vLLM's processing of the frames, and stepping); outside: the rest of the job (reading the
  manifest and shard, loading frames, templates, results, journal, stats) as a share of the job
  without engine start-up (P2 target: at most 5%);
- peak RSS of the job process (wait4), and its ratio to the smallest shard's: flat means bounded by
  the engine's window, not by the shard (P-memory: within 1.3x).

Only ``--distinct`` frame files are written and records cycle over them (disk): repeated frames can hit
vLLM's caches, so the larger shards may be slightly faster per record than truly distinct data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers import build_tiny_model, synthetic_shard  # noqa: E402

from vidcap import config as vconfig  # noqa: E402
from vidcap import settings as vsettings  # noqa: E402

JOB = """
import json, sys
from vidcap.caption import caption_shard
stats = caption_shard(*sys.argv[1:4], json.loads(sys.argv[4]), log=sys.stderr)
with open(sys.argv[3] + ".bench-stats", "w") as handle:
    json.dump(stats, handle)
"""


def run_job(shard: Path, manifest: Path, out: Path, settings: dict) -> tuple[dict, float]:
    """One caption job in its own process (all it prints goes to OUT.log); its stats and peak RSS in MiB."""
    log = Path(f"{out}.log")
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", JOB, str(shard), str(manifest), str(out), json.dumps(settings)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"caption job failed for {shard}: see {log}")
    return json.loads(Path(f"{out}.bench-stats").read_text()), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, nargs="+", default=[50, 500, 2000])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="448x252")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    width, height = (int(x) for x in args.size.split("x"))

    work = Path(tempfile.mkdtemp(prefix="vidcap-bench-caption-"))
    model = work / "model"
    build_tiny_model(model, "qwen2_5_vl")
    config = vconfig.load(
        overrides={
            "input": "records.jsonl",
            "model": str(model),
            "sampling": {"max_tokens": args.max_tokens},
            "engine": {
                "max_model_len": 8192,
                "dtype": "bfloat16",
                "enforce_eager": True,
                "cpu_kvcache_space_gb": 2,
                "max_num_seqs": args.max_num_seqs,
            },
        }
    )
    settings = vsettings.caption_job(config)
    print(
        f"caption job, tiny Qwen2.5-VL on the CPU build, {args.frames} frames of {args.size} per record, "
        f"seeded sampling (temperature {config['sampling']['temperature']}), max_tokens {args.max_tokens}, "
        f"max_num_seqs {args.max_num_seqs}"
    )
    print(
        f"{'records':>8} {'job s':>8} {'engine s':>9} {'generate s':>11} {'outside':>8} {'rec/s':>7} "
        f"{'peak RSS MiB':>13} {'RSS ratio':>10}"
    )
    first_rss = None
    for n in args.records:
        shard, manifest = synthetic_shard(work, n, args.frames, width, height, args.distinct)
        stats, rss = run_job(shard, manifest, work / f"out{n}.jsonl", settings)
        first_rss = first_rss or rss
        job = stats["seconds"] - stats["engine_seconds"]
        outside = (job - stats["generate_seconds"]) / job
        print(
            f"{n:>8} {stats['seconds']:>8.1f} {stats['engine_seconds']:>9.1f} {stats['generate_seconds']:>11.1f} "
            f"{outside:>8.1%} {n / job:>7.2f} {rss:>13.0f} {rss / first_rss:>10.2f}",
            flush=True,
        )
    print(f"(work files in {work})")


if __name__ == "__main__":
    main()
