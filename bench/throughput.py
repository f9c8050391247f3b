"""Caption throughput: the real caption job vs a bare ``LLM.generate`` on the same engine, in one run.

    .venv/bin/python bench/throughput.py --model DIR --videos N \
        [--frames 32 --size 448x252 --output-tokens 200]

Synthetic clips (distinct content, ``--frames`` frames of ``--size`` each after the frames step) go
through the frames step into the cache. One vLLM engine is started. Baseline: the same requests the
job would send (prompt text and frames prepared before the timer) through a bare ``LLM.generate``
(at most ``--window`` requests in the engine at once). Then ``vidcap.caption.caption_shard`` on the
same shard with that engine: cache -> engine -> results and stats. Every caption has exactly
``--output-tokens`` tokens (``min_tokens = max_tokens``, ``ignore_eos``), so random weights give a
fair figure: speed depends on shapes, not values. Without ``--model`` the tiny random Qwen2.5-VL is
built (a smoke figure on the CPU build). For a GPU figure, build a real architecture first:
``python -m vidcap tiny-model DIR --arch qwen2_5_vl --size 7b`` (see docs/gpu-clusters.md).
Prints videos/s, prompt and output tokens/s for both, and the ratio job/bare (of throughputs).
The job's videos/s counts every answered record (ok, truncated and degenerate): the degeneration
guard runs label-only (``quality.retries: 0``, no re-sampling), so a caption it labels degenerate
(random weights loop) cost the same engine work as an ok one; only failed records are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers import make_video, write_records  # noqa: E402

from vidcap.backends import NO_RESIZE  # noqa: E402
from vidcap.budget import patch_factor_for  # noqa: E402
from vidcap.caption import caption_shard  # noqa: E402
from vidcap.config import defaults  # noqa: E402
from vidcap.engine import start_engine  # noqa: E402
from vidcap.engine_build import check_engine_build, describe  # noqa: E402
from vidcap.frames import extract_frames  # noqa: E402
from vidcap.prompts import build_messages, record_seed, video_item  # noqa: E402

PROMPT = "Describe this video in detail."
SYSTEM = "You are a helpful assistant."
SOURCES = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "cellauto", "life"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny random Qwen2.5-VL)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32, help="frames per video (even)")
    parser.add_argument("--size", default="448x252", help="frame size WxH after the frames step")
    parser.add_argument("--output-tokens", type=int, default=200, help="tokens per caption, exactly")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help=">0: seeded sampling per record, as the job"
    )
    parser.add_argument("--window", type=int, default=256, help="bare baseline: most requests in the engine")
    parser.add_argument("--max-model-len", type=int, help="default: the prompt plus the caption, rounded up")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each, interleaved; the median pair is reported"
    )
    parser.add_argument("--work", help="folder for clips, cache and results (default: a new temp folder)")
    return parser.parse_args()


def make_inputs(args, work: Path, model: str) -> tuple[Path, Path, dict]:
    """Clips, shard and frame manifest: the frames step's work, done before anything is timed."""
    width, height = (int(v) for v in args.size.split("x"))
    seconds = args.frames / 2.0  # sampled at 2 fps
    records = []
    for i in range(args.videos):
        clip = work / "clips" / f"v{i:05d}.mp4"
        if not clip.exists():  # distinct content per clip: no cache of any kind can serve one from another
            make_video(
                clip,
                seconds=seconds,
                size=args.size,
                rate=8,
                source=SOURCES[i % len(SOURCES)],
                extra=["-vf", f"hue=h={i * 7 % 360}:s={1 + (i % 5) / 10}"],
            )
        records.append({"video": f"clips/{clip.name}", "conversation": [{"from": "human", "value": ""}]})
    shard = write_records(work / "0000.jsonl", records)
    frames = {
        "fps": 2.0,
        "min_frames": args.frames,
        "max_frames": args.frames,
        "min_pixels": width * height,
        "max_pixels": width * height,
        "patch_factor": patch_factor_for(model),
    }
    manifest = work / "0000.json"
    extract_frames(
        str(shard),
        str(manifest),
        {"keys": {}, "frames": frames, "cache_dir": str(work / "cache"), "media_root": str(work)},
        threads=min(8, os.cpu_count() or 1),
    )
    return shard, manifest, frames


def chat_text(model: str, tokenizer) -> str:
    try:  # the processor's template, as vLLM and the caption job use
        from transformers import AutoProcessor

        apply = AutoProcessor.from_pretrained(model).apply_chat_template
    except Exception:  # noqa: BLE001 -- no processor config: the tokenizer's template
        apply = tokenizer.apply_chat_template
    return apply(build_messages(SYSTEM, 0, 1, PROMPT), tokenize=False, add_generation_prompt=True)


def run_bare(llm, requests: list, params: list, window: int) -> tuple[float, list]:
    """One generate over prepared requests, at most ``window`` of them queued in the engine."""
    llm.reset_prefix_cache()  # the job must not find the baseline's prompts cached, nor the other way round
    t0 = time.monotonic()
    if window <= 0 or window >= len(requests):
        outputs = llm.generate(requests, params, use_tqdm=False)
        return time.monotonic() - t0, outputs
    outputs, submitted, engine = [], 0, llm.llm_engine
    while len(outputs) < len(requests):
        while submitted < len(requests) and submitted - len(outputs) < window:
            llm.enqueue([requests[submitted]], params[submitted], use_tqdm=False)
            submitted += 1
        outputs.extend(out for out in engine.step() if out.finished)
    return time.monotonic() - t0, outputs


def sampling_params(args, digests: list[str]) -> list:
    from vllm import SamplingParams

    seeded = args.temperature > 0
    return [
        SamplingParams(
            temperature=args.temperature,
            top_p=0.9 if seeded else 1.0,
            max_tokens=args.output_tokens,
            min_tokens=args.output_tokens,
            ignore_eos=True,
            seed=record_seed(0, d) if seeded else None,
        )
        for d in digests
    ]


def machine() -> str:
    gpus = "no GPU"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split("\n")
        gpus = ", ".join(n for n in out if n.strip()) or gpus
    except (OSError, subprocess.SubprocessError):
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.node()}: {os.cpu_count()} cores, {gpus}, load average {load}"


def report(name: str, seconds: float, videos: int, prompt: int, output: int) -> dict:
    row = {
        "seconds": seconds,
        "videos_per_s": videos / seconds,
        "prompt_tps": prompt / seconds,
        "output_tps": output / seconds,
        "prompt_tokens": prompt,
        "output_tokens": output,
    }
    print(
        f"{name:<13} {seconds:8.2f} s  {row['videos_per_s']:8.3f} videos/s  "
        f"{row['prompt_tps']:10.1f} prompt tok/s  {row['output_tps']:9.1f} output tok/s  "
        f"({prompt} prompt, {output} output tokens)"
    )
    return row


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = check_engine_build("auto")  # a CPU build on a GPU node would measure the wrong thing
    work = Path(args.work or tempfile.mkdtemp(prefix="vidcap-bench-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None and not (work / "model" / "config.json").exists():
        model = str(work / "model")
        subprocess.run(
            [sys.executable, "-m", "vidcap", "tiny-model", model, "--arch", "qwen2_5_vl"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    model = model or str(work / "model")
    print(f"machine: {machine()}; vLLM {device} build ({describe()})")
    t0 = time.monotonic()
    shard, manifest, frames = make_inputs(args, work, model)
    print(
        f"{args.videos} clips, {args.frames} frames of {args.size}, {args.output_tokens} output tokens each; "
        f"frames step {time.monotonic() - t0:.1f} s (not counted)"
    )

    width, height = (int(v) for v in args.size.split("x"))
    factor = frames["patch_factor"]
    vision = args.frames // 2 * (height // factor) * (width // factor)
    max_model_len = args.max_model_len or -(-(vision + 512 + args.output_tokens) // 1024) * 1024
    engine = {
        **defaults("engine"),
        "max_model_len": max_model_len,
        "dtype": args.dtype,
        "tensor_parallel_size": args.tensor_parallel_size,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enforce_eager": args.enforce_eager or device == "cpu",
        "cpu_kvcache_space_gb": 2,
    }
    t0 = time.monotonic()
    llm = start_engine(model, engine, {"video": 1, "image": 0}, 0)
    print(
        f"engine: max_model_len {max_model_len} ({vision} vision tokens per video planned), "
        f"start {time.monotonic() - t0:.1f} s (not counted)"
    )

    entries = json.loads(manifest.read_text())["records"]
    text = chat_text(model, llm.get_tokenizer())
    # as the job sends them: frames at their planned size (no processor resize)
    requests = [
        {
            "prompt": text,
            "multi_modal_data": {"video": video_item(e["videos"][0])},
            "mm_processor_kwargs": NO_RESIZE,
        }
        for e in entries
    ]
    params = sampling_params(args, [e["digest"] for e in entries])
    llm.generate(requests[:2], params[:2], use_tqdm=False)  # warm-up: compile, allocate

    sampling = {
        "temperature": args.temperature,
        "top_p": 0.9 if args.temperature > 0 else 1.0,
        "max_tokens": args.output_tokens,
        "min_tokens": args.output_tokens,
        "ignore_eos": True,
        "seed": 0,
    }
    settings = {
        "model": model,
        "prompt": PROMPT,
        "system_prompt": SYSTEM,
        "keys": {},
        "sampling": sampling,
        "engine": engine,
        "frames": frames,
        # label-only guard: no re-sampling, so every answered record is one request, as in the baseline
        "quality": {"retries": 0},
    }
    bare_runs, job_runs = [], []
    for i in range(args.repeat):  # interleaved: other work on the machine hits both alike
        bare_runs.append(run_bare(llm, requests, params, args.window))
        llm.reset_prefix_cache()
        # an empty result store each run: answers stored by an earlier run (or an earlier --work use)
        # would be read instead of generated
        store = work / f"store{i}"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.monotonic()
        with open(work / "caption.log", "w") as log:
            stats = caption_shard(
                str(shard),
                str(manifest),
                str(work / f"captions{i}.jsonl"),
                {**settings, "store": str(store)},
                log=log,
                llm=llm,
            )
        job_runs.append((time.monotonic() - t0, stats))
        assert stats["stored"] == 0, "the job read answers from a result store: not a throughput figure"
    del requests
    # the rows come from the median pair (runs next to each other see the same load): its job/bare
    # ratio is the median of the per-pair ratios by construction; best-of-each mixes runs of different loads
    pairs = sorted(range(args.repeat), key=lambda i: bare_runs[i][0] / job_runs[i][0])
    median = pairs[len(pairs) // 2]
    bare_seconds, outputs = bare_runs[median]
    job_seconds, stats = job_runs[median]
    ratios = [bare_runs[i][0] / job_runs[i][0] for i in pairs]
    print(
        f"{args.repeat} interleaved pairs: bare {', '.join(f'{r[0]:.2f}' for r in bare_runs)} s; "
        f"job {', '.join(f'{r[0]:.2f}' for r in job_runs)} s; job/bare per pair: median "
        f"{ratios[len(ratios) // 2]:.3f}, range {ratios[0]:.3f}..{ratios[-1]:.3f}; rows below: pair {median + 1}"
    )
    bare = report(
        "bare generate",
        bare_seconds,
        len(outputs),
        sum(len(o.prompt_token_ids) for o in outputs),
        sum(len(o.outputs[0].token_ids) for o in outputs),
    )
    answered = stats["ok"] + stats["truncated"] + stats["degenerate"]
    job = report("caption job", job_seconds, answered, stats["prompt_tokens"], stats["output_tokens"])
    print(
        f"caption job counts every answered record: {stats['ok']} ok, {stats['truncated']} truncated, "
        f"{stats['degenerate']} degenerate (guard label-only: quality.retries 0, no re-sampling), "
        f"{stats['error']} failed (not counted)"
    )
    if stats["error"]:
        print(f"WARNING: {stats['error']} record(s) failed in the job (see {work}/captions{median}.jsonl)")
    if job["output_tokens"] != bare["output_tokens"]:
        print(
            f"WARNING: the job wrote {job['output_tokens']} output tokens, "
            f"the baseline {bare['output_tokens']}: "
            "the job does not force a fixed caption length (min_tokens/ignore_eos), so compare tokens/s"
        )
    if job["prompt_tokens"] != bare["prompt_tokens"]:
        print(f"WARNING: prompts differ ({job['prompt_tokens']} vs {bare['prompt_tokens']} tokens)")
    best = min(r[0] for r in bare_runs) / min(r[0] for r in job_runs)
    print(
        f"job / bare (videos/s): {job['videos_per_s'] / bare['videos_per_s']:.3f} (the median pair; "
        f"best of each {best:.3f}); job generate {stats['generate_seconds']:.2f} s of {job_seconds:.2f} s"
    )
    print(f"machine after: {machine()}; work files in {work}")


if __name__ == "__main__":
    main()
