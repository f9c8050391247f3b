"""Cost of ``vidcap audit`` on N synthetic captions, against ``vidcap stats`` (one streaming pass) as baseline.

    python bench/audit.py --records 100000 [--dir /tmp/vidcap-audit-bench]

Captions are random sentences over a 2,000-word vocabulary (about 60 words each), with 1% planted
exact copies of one caption and 1% near copies (one word changed). Prints wall and CPU time of both
commands (CPU time is the fair figure on a shared machine), peak RSS and their ratio, and checks the audit found the planted groups.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path


def synthetic(n: int, seed: int = 0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    boiler = "The video shows a scene where"
    planted = boiler + " " + " ".join(rng.choices(vocab, k=60))
    near = (boiler + " " + " ".join(rng.choices(vocab, k=60))).split()
    for i in range(n):
        if i % 100 == 7:
            caption = planted  # exact copies
        elif i % 100 == 53:
            words = list(near)
            words[rng.randrange(10, len(words))] = f"changed{i}"
            caption = " ".join(words)  # near copies: one word differs
        else:
            caption = (boiler + " " if i % 3 == 0 else "") + " ".join(
                rng.choices(vocab, k=rng.randint(20, 100))
            )
        yield {"video": f"clips/{i}.mp4", "caption": caption, "caption_meta": {"status": "ok", "frames": 16}}


def measure(cmd: list[str]) -> dict:
    """Wall and CPU seconds (user + sys: the fair figure on a shared machine) and peak RSS of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": after.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/vidcap-audit-bench")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"captions-{args.records}.jsonl"
    if not path.exists():
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in synthetic(args.records))
    stats = measure([sys.executable, "-m", "vidcap", "stats", str(path)])
    audit = measure([sys.executable, "-m", "vidcap", "audit", str(path)])
    result = json.loads(
        subprocess.run(
            [sys.executable, "-m", "vidcap", "audit", "--json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print(
        json.dumps(
            {
                "records": args.records,
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "stats_seconds": round(stats["seconds"], 1),
                "stats_cpu_seconds": round(stats["cpu_seconds"], 1),
                "audit_seconds": round(audit["seconds"], 1),
                "audit_cpu_seconds": round(audit["cpu_seconds"], 1),
                "audit_over_stats_cpu": round(audit["cpu_seconds"] / stats["cpu_seconds"], 1),
                "peak_rss_mb_of_any_run": round(audit["peak_rss_mb"]),
                "exact_top_size": result["exact_duplicates"]["top"][0]["size"]
                if result["exact_duplicates"]["top"]
                else 0,
                "near_top_size": result["near_duplicates"]["top"][0]["size"]
                if result["near_duplicates"]["top"]
                else 0,
                "near_groups": result["near_duplicates"]["groups"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
