"""What a caption set costs: K captions per video (the primary and K-1 set entries) against one.

    .venv/bin/python bench/caption_set.py [--records 8] [--frames 16] [--size 448x252] [--k 3] [--repeat 2]
                                          [--processor-cache-gb 0]

Real caption jobs (vidcap.caption.caption_shard, the path a build takes) on one engine (the tiny random
Qwen2.5-VL on the CPU build here: its captions are gibberish, only the counts mean anything), over a
synthetic shard whose frames sit in the frame cache (noise, ``--frames`` frames of ``--size``, one video
per record). Each run has a store of its own (nothing answered from an earlier run) and starts with vLLM's
prefix and multimodal caches emptied, as a new job's engine would. Runs alternate K=1 and K, ``--repeat``
times each. From vLLM's own counters (vidcap.engine_counters, the job's ``stats["vllm"]``):

- prompt tokens: what the engine was asked to prefill, and computed: less the prefix-cache hits. Target
  for K=3: at most 1.3x the tokens computed for K=1 (the video is prefilled once, each entry adds its
  question and the tail of the video's last partly filled KV block: 128 tokens on the CPU build, 16 on GPUs);
- encoder runs per video: media items the scheduler sent through the vision encoder. Target: 1.

Times are printed as well, but on 2 shared CPU cores they say little; the counters do not depend on load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the figures, not the engine's log

from helpers import build_tiny_model, synthetic_shard  # noqa: E402

from vidcap import config as vconfig  # noqa: E402
from vidcap.caption import caption_shard  # noqa: E402
from vidcap.engine import start_engine  # noqa: E402
from vidcap.settings import caption_job  # noqa: E402

QUESTIONS = [
    "Describe the camera motion.",
    "List five tags for this video.",
    "Write a one-line prompt a text-to-video model could use.",
    "What happens first and what happens last?",
]


def job_settings(model: Path, k: int, max_model_len: int, max_tokens: int, processor_cache_gb: float) -> dict:
    entries = {f"entry{i}": {"prompt": QUESTIONS[i % len(QUESTIONS)]} for i in range(k - 1)}
    config = vconfig.load(
        None,
        {
            "input": "records.json",
            "model": str(model),
            "prompt": "Describe the video.",
            "caption_set": entries,
            # fixed-length answers: every run decodes the same number of tokens
            "sampling": {"temperature": 0.0, "max_tokens": max_tokens, "min_tokens": max_tokens},
            "engine": {
                "max_model_len": max_model_len,
                "dtype": "bfloat16",
                "enforce_eager": True,
                "cpu_kvcache_space_gb": 2,
                "mm_processor_cache_gb": processor_cache_gb,
            },
        },
    )
    return caption_job(config)


def run(llm, shard, manifest, work: Path, settings: dict, name: str) -> tuple[float, dict]:
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    out = work / f"{name}.jsonl"
    settings = {**settings, "store": str(work / f"{name}.store")}
    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        stats = caption_shard(str(shard), str(manifest), str(out), settings, log=quiet, llm=llm)
    return time.perf_counter() - t0, stats


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", default="448x252")
    parser.add_argument("--k", type=int, default=3, help="captions per video: the primary and k-1 entries")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--processor-cache-gb", type=float, default=0.0, help="engine.mm_processor_cache_gb (default 0)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    width, height = (int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="vidcap-bench-caption-set-"))
    model = work / "model"
    build_tiny_model(model, "qwen2_5_vl")
    shard, manifest = synthetic_shard(work, args.records, args.frames, width, height)
    max_model_len = 8192
    settings = {
        k: job_settings(model, k, max_model_len, args.max_tokens, args.processor_cache_gb)
        for k in (1, args.k)
    }
    llm = start_engine(str(model), settings[1]["engine"], {"video": 1, "image": 0}, 0)
    run(llm, shard, manifest, work, settings[1], "warm-up")
    print(
        f"caption_set: tiny Qwen2.5-VL (random weights: gibberish captions), vLLM CPU build; {machine()}; "
        f"{args.records} records of {args.frames} frames of {args.size}, K={args.k} captions per video "
        f"(primary + {args.k - 1} set entries) vs K=1, {args.max_tokens} output tokens each, "
        f"medians of {args.repeat} alternating runs; mm_processor_cache_gb {args.processor_cache_gb:g}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    runs = {1: [], args.k: []}
    for i in range(args.repeat):
        for k in (1, args.k):
            runs[k].append(run(llm, shard, manifest, work, settings[k], f"k{k}-{i}"))
    rows = {}
    for k, done in runs.items():
        counts = [s["vllm"] for _, s in done]
        rows[k] = {
            "seconds": statistics.median(t for t, _ in done),
            "requests": statistics.median(s["requests"] for _, s in done),
            "prompt": statistics.median(c["prompt_tokens"] for c in counts) / args.records,
            "computed": statistics.median(c["prompt_tokens_computed"] for c in counts) / args.records,
            "hits": statistics.median(c["prefix_cache_hits"] for c in counts) / args.records,
            "encoder": (
                statistics.median(c["encoder_inputs"] for c in counts) / args.records
                if all(c["encoder_inputs"] is not None for c in counts)
                else None
            ),
        }
    for k, row in rows.items():
        encoder = "n/a" if row["encoder"] is None else f"{row['encoder']:.2f}"
        print(
            f"K={k}: {row['requests']:.0f} requests; per video: {row['prompt']:.0f} prompt tokens, "
            f"{row['hits']:.0f} prefix-cache hits, {row['computed']:.0f} computed, {encoder} encoder runs; "
            f"{row['seconds']:.2f} s per job"
        )
    one, many = rows[1], rows[args.k]
    print(
        f"ratio K={args.k}/K=1: prompt tokens computed {many['computed'] / one['computed']:.2f}x "
        f"(asked {many['prompt'] / one['prompt']:.2f}x), job time {many['seconds'] / one['seconds']:.2f}x"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
