"""What `candidates.n` costs: one request with n candidates against one request with n=1.

    .venv/bin/python bench/candidates.py [--records 8] [--frames 32] [--size 448x252] [--repeat 3]

One engine (the tiny random Qwen2.5-VL on the CPU build here), the requests vidcap's offline backend
sends (pre-sampled frames, no resize, content uuids), new uuids and new pixels for every run so no run
hits an earlier run's prefix or encoder cache. Runs alternate n=1 and n=n, ``--repeat`` times each:

- prefill: ``max_tokens`` 1, so the time is the prompt's (vision encoder + prefill); the ratio
  n=4 / n=1 is the prefill cost of the candidates (1.0: one prefill shared, 4.0: one per candidate);
- prompt tokens computed: vLLM's own counters (prompt tokens minus prefix-cache hits), per record;
- decode: ``max_tokens`` ``--max-tokens`` with ``min_tokens`` the same (fixed-length answers), where the
  n candidates' decodes are the extra work.

Figures are ratios from the same process and the same minutes, so a busy machine slows both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the figures, not the engine's log

from vidcap.backends import NO_RESIZE  # noqa: E402
from vidcap.config import defaults  # noqa: E402
from vidcap.engine import start_engine  # noqa: E402
from vidcap.prompts import chat_template  # noqa: E402

ENGINE = {
    **defaults("engine"),
    "max_model_len": 8192,
    "dtype": "bfloat16",
    "enforce_eager": True,
    "cpu_kvcache_space_gb": 2,
}


def requests(text: str, records: int, frames: int, width: int, height: int, rng) -> list[dict]:
    """Fresh pixels and fresh uuids: nothing cached by an earlier run."""
    out = []
    for _ in range(records):
        video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        meta = {
            "fps": 30.0,
            "duration": frames / 2,
            "total_num_frames": frames * 15,
            "frames_indices": [j * 15 for j in range(frames)],
            "video_backend": "opencv",
            "do_sample_frames": False,
        }
        out.append(
            {
                "prompt": text,
                "multi_modal_data": {"video": (video, meta)},
                "multi_modal_uuids": {"video": [uuid.uuid4().hex]},
                "mm_processor_kwargs": NO_RESIZE,
            }
        )
    return out


def counters(llm) -> dict[str, float]:
    wanted = ("vllm:prompt_tokens", "vllm:prefix_cache_hits", "vllm:generation_tokens")
    values = dict.fromkeys(wanted, 0.0)
    for metric in llm.get_metrics():
        if metric.name in wanted and hasattr(metric, "value"):
            values[metric.name] += metric.value
    return values


def timed(llm, batch: list[dict], n: int, max_tokens: int) -> tuple[float, dict]:
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=0.7, seed=1, max_tokens=max_tokens, min_tokens=max_tokens)
    before = counters(llm)
    t0 = time.perf_counter()
    llm.generate(batch, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    after = counters(llm)
    return seconds, {k: after[k] - before[k] for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="448x252")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    width, height = (int(x) for x in args.size.split("x"))
    model = Path(tempfile.mkdtemp(prefix="vidcap-bench-candidates-")) / "model"
    subprocess.run(
        [sys.executable, "-m", "vidcap", "tiny-model", str(model), "--arch", "qwen2_5_vl"],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    llm = start_engine(str(model), {**ENGINE, "vllm_args": {"disable_log_stats": False}}, {"video": 1}, 0)
    text = chat_template(str(model), llm.get_tokenizer())("", 0, 1, "Describe the video.")
    rng = np.random.default_rng(0)
    timed(llm, requests(text, 2, args.frames, width, height, rng), 1, 1)  # warm-up
    print(
        f"candidates: tiny Qwen2.5-VL, CPU build, {args.records} records of {args.frames} frames of {args.size}, "
        f"n={args.n} vs n=1, medians of {args.repeat} alternating runs; load average {os.getloadavg()[0]:.2f}"
    )
    rows = {}
    for phase, max_tokens in (("prefill", 1), ("decode", args.max_tokens)):
        runs = {1: [], args.n: []}
        for _ in range(args.repeat):
            for n in (1, args.n):
                batch = requests(text, args.records, args.frames, width, height, rng)
                runs[n].append(timed(llm, batch, n, max_tokens))
        rows[phase] = runs
        one = statistics.median(s for s, _ in runs[1])
        many = statistics.median(s for s, _ in runs[args.n])
        computed = {
            n: statistics.median(
                (c["vllm:prompt_tokens"] - c["vllm:prefix_cache_hits"]) / args.records for _, c in r
            )
            for n, r in runs.items()
        }
        print(
            f"{phase:>8} (max_tokens {max_tokens:>3}): n=1 {one:6.2f} s, n={args.n} {many:6.2f} s, "
            f"ratio {many / one:5.2f}; prompt tokens computed per record: n=1 {computed[1]:.0f}, "
            f"n={args.n} {computed[args.n]:.0f} ({computed[args.n] / computed[1]:.2f}x)",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
