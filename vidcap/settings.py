"""Each workflow step's settings, built in one place from the validated configuration.

Rules take what a step's output depends on as ``params`` (a change there reruns the step) and the
job scripts and the command line take the rest (engine sizing, which must not rerun anything) from
here too, so no rule, script or CLI reads raw ``config[...]`` keys of its own.
"""

from __future__ import annotations

import json
import os

from vidcap import budget
from vidcap.config import FRAMES_RUN_ONLY, ConfigError, audio_mode, with_defaults


def media_root(config: dict) -> str:
    # kept relative when relative: a moved or copied project directory rebuilds nothing
    return config["media_root"] or os.path.dirname(config["input"]) or "."


def frame_params(config: dict) -> dict:
    """Frame settings with each video's vision-token budget resolved (the frames step's parameters)."""
    frames = config["frames"]
    params = {k: v for k, v in frames.items() if k not in ("threads", "prompt_tokens", "keep")}
    if params["max_vision_tokens"] is None:
        params["max_vision_tokens"] = budget.video_token_budget(
            config["engine"]["max_model_len"], config["sampling"]["max_tokens"], frames["prompt_tokens"]
        )
    if params["patch_factor"] is None:
        params["patch_factor"] = budget.patch_factor_for(config["model"])
    return params


def frames_job_threads(config: dict) -> int:
    """Cores a frames job books: frames.threads decodes of max(1, frames.decoder_threads) threads each
    (vidcap.frames.decode_split keeps the job within them)."""
    frames = config["frames"]
    return int(frames["threads"]) * max(1, int(frames["decoder_threads"]))


def frames_cache_dir(config: dict, shard: str) -> str:
    results = config["results"].rstrip("/")
    return f"{results}/frames/cache" if config["frames"]["keep"] else f"{results}/frames/{shard}.frames"


def frames_settings(config: dict, shard: str) -> dict:
    """What the frames step's output depends on (changing it re-extracts)."""
    return {
        "media_root": media_root(config),
        "media_root_only": config["media_root_only"],
        "keys": config["keys"],
        "frames": frame_params(config),
        "cache_dir": frames_cache_dir(config, shard),
        "long_video": window_settings(config),
        # audio.mode native: the frames step caches each video's audio too (other modes: as without it)
        **({"audio": {"mode": "native"}} if audio_mode(config) == "native" else {}),
    }


def frames_rule_params(config: dict, shard: str) -> dict:
    """The frames rule's params: :func:`frames_settings` without the run-only settings."""
    step = frames_settings(config, shard)
    step["frames"] = {k: v for k, v in step["frames"].items() if k not in FRAMES_RUN_ONLY}
    return step


def window_settings(config: dict) -> dict:
    """What windows depend on (the frames step's part of long_video; the summary keys are not)."""
    return {k: config["long_video"][k] for k in ("mode", "window_frames", "min_window_frames", "shots")}


def summary_params(config: dict) -> dict:
    """What a summary and the derived caption-set entries depend on (a change reruns only the summary
    jobs and the merge). A summary answers as a short record's caption would (candidates, output_format)."""
    lv = config["long_video"]
    answer = quality_params(config)
    visual = visual_summary_params(config) if lv["mode"] != "single" else []
    return {
        "model": lv["summary_model"] or config["model"],
        "prompt": lv["summary_prompt"],
        "system_prompt": config["system_prompt"],
        "sampling": {**config["sampling"], "max_tokens": lv["summary_max_tokens"]},
        "max_model_len": config["engine"]["max_model_len"],
        "engine_numerics": engine_numerics(config),
        "candidates": answer["candidates"],
        "output_format": answer["output_format"],
        "output_schema": answer["output_schema"],
        "derived": derived_params(config),
        # visual entries of long videos are summarised from their window answers (vidcap.entry_summaries)
        **({"visual": visual} if visual else {}),
    }


def derived_params(config: dict) -> list[dict]:
    """The derived caption-set entries (vidcap.derived), in dependency order, each with its settings
    resolved over the top-level ones and its schema's content."""
    from vidcap.caption_set import derived_entries

    return [_text_entry_params(config, e, config["sampling"]["max_tokens"]) for e in derived_entries(config)]


def visual_summary_params(config: dict) -> list[dict]:
    """The visual caption-set entries as a long video's summary asks them (vidcap.entry_summaries), in
    config order: each entry's own settings over the top-level ones, its max_tokens over
    long_video.summary_max_tokens."""
    from vidcap.caption_set import visual_entries

    max_tokens = config["long_video"]["summary_max_tokens"]
    return [_text_entry_params(config, e, max_tokens) for e in visual_entries(config)]


def _text_entry_params(config: dict, entry, default_max_tokens: int) -> dict:
    """An entry's settings for a text-only request of the summary engine, with its schema's content."""
    from vidcap.structured import load_schema

    schema = None
    if entry.output_format == "json":
        try:
            schema = load_schema(entry.output_schema)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"caption_set.{entry.name}.output_schema: {exc}") from None
    system = entry.system_prompt if entry.system_prompt is not None else config["system_prompt"]
    max_tokens = entry.max_tokens or default_max_tokens
    return {
        "name": entry.name,
        "from": entry.source,
        "prompt": entry.prompt,
        "system_prompt": system,
        "sampling": {**config["sampling"], **entry.sampling, "max_tokens": max_tokens},
        "output_format": entry.output_format or "text",
        "output_schema": schema,
    }


def needs_summary_step(config: dict) -> bool:
    """Whether the merge reads the summary step's results: windows to summarise, or derived entries."""
    return config["long_video"]["mode"] != "single" or bool(derived_params(config))


def summary_job(config: dict) -> dict:
    """Everything a summary job needs: its params plus engine sizing (a text engine: no frame budget), for
    a server backend the model name the server answers to, and the result store."""
    lv, engine = config["long_video"], config["engine"]
    served = lv["summary_model"] or engine["served_model"] or config["model"]
    return {
        **summary_params(config),
        "engine": dict(engine),
        "served_name": served,
        "store": result_store(config),
        # each record's own prompt reaches its summary (the caption jobs, which depend on them, rerun first)
        "keys": config["keys"],
        "caption_prompt": config["prompt"],
        "caption_set_names": list(config.get("caption_set") or {}),
    }


def caption_params(config: dict) -> dict:
    """What a caption depends on (a change reruns caption jobs, and changes every result-store key but
    the prompt's and keys', which act per record: vidcap.result_keys); engine sizing is left out on
    purpose. The visual caption-set entries (``caption_set``, only when there are any) rerun the jobs too,
    but reach only their own entries' keys (not in :data:`CAPTION_PARAM_KEYS`)."""
    from vidcap.caption_set import visual_params

    entries = visual_params(config)
    return {
        "model": config["model"],
        "prompt": config["prompt"],
        "system_prompt": config["system_prompt"],
        "keys": config["keys"],
        "sampling": config["sampling"],
        "max_model_len": config["engine"]["max_model_len"],
        "engine_numerics": engine_numerics(config),
        **quality_params(config),
        **audio_params(config),
        **({"caption_set": entries} if entries else {}),
    }


def audio_params(config: dict) -> dict:
    """The audio mode, only when it is not off: an off build's params (and result keys) are as without it."""
    mode = audio_mode(config)
    if mode == "off":
        return {}
    if mode != "transcript":
        return {"audio": {"mode": mode}}
    tokens = with_defaults("audio", config.get("audio"))["transcript_tokens"]  # it shapes the prompt
    return {"audio": {"mode": mode, "transcript_tokens": tokens}}


def transcripts_path(config: dict, shard: str) -> str:
    return f"{config['results'].rstrip('/')}/transcripts/{shard}.jsonl"


def asr_params(config: dict) -> dict:
    """What a transcript depends on (a change reruns transcribe jobs); no caption setting is here, so an
    edited caption prompt transcribes nothing again."""
    audio = with_defaults("audio", config.get("audio"))
    return {
        "asr_model": audio["asr_model"],
        "language": audio["language"],
        "media_root": media_root(config),
        "keys": {"video": config["keys"]["video"]},
    }


def asr_job(config: dict) -> dict:
    """Everything a transcribe job needs: its params, the engine section (sized for Whisper in the job)
    and the result store."""
    return {**asr_params(config), "engine": dict(config["engine"]), "store": result_store(config)}


def engine_numerics(config: dict) -> dict:
    """Which model answers and with what numerics; vllm_args as a hash (it may hold a token)."""
    from vidcap.provenance import canonical_hash

    engine = config["engine"]
    return {
        "dtype": engine["dtype"],
        "vllm_args": canonical_hash(engine["vllm_args"]),
        "backend": engine["backend"],
        "served_model": engine["served_model"],
    }


CAPTION_PARAM_KEYS = (
    "model",
    "prompt",
    "system_prompt",
    "keys",
    "sampling",
    "max_model_len",
    "engine_numerics",
    "candidates",
    "quality",
    "output_format",
    "output_schema",
)


def caption_params_of_job(job: dict) -> dict:
    """The :func:`caption_params` part of a caption job's settings (:func:`caption_job`)."""
    params = {k: job.get(k) for k in CAPTION_PARAM_KEYS}
    return {**params, **({"audio": job["audio"]} if job.get("audio") else {})}


def result_store(config: dict) -> str:
    """The result store's folder (vidcap.store): per build, beside the other results."""
    return f"{config['results'].rstrip('/')}/store"


def quality_params(config: dict) -> dict:
    """Candidates, the degeneration guard and the answer format (the schema's content, not its path)."""
    from vidcap.structured import load_schema

    candidates = with_defaults("candidates", config.get("candidates"))
    if candidates["n"] > 1 and config["sampling"]["temperature"] <= 0:
        raise ConfigError(
            f"candidates.n {candidates['n']} needs sampling.temperature > 0: greedy decoding gives one answer"
        )
    output_format, schema = config.get("output_format", "text"), None
    if output_format == "json":
        try:
            schema = load_schema(config.get("output_schema"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"output_schema: {exc}") from None
    return {
        "candidates": candidates,
        "quality": with_defaults("quality", config.get("quality")),
        "output_format": output_format,
        "output_schema": schema,
    }


def caption_job(config: dict, shard: str | None = None) -> dict:
    """Everything a caption job needs: its params plus engine sizing and the frame settings, and with
    ``shard`` the frames step's settings, to extract again frames gone from the cache."""
    job = {
        **caption_params(config),
        "engine": engine_settings(config),
        "frames": config["frames"],
        "store": result_store(config),
    }
    if shard is not None:
        job["frames_step"] = frames_settings(config, shard)
        if audio_mode(config) == "transcript":
            job["transcripts"] = transcripts_path(config, shard)
    return job


def engine_settings(config: dict) -> dict:
    """The engine section with the limits the frame budget needs filled in (see :func:`engine_token_limit`)
    and ``vllm_args`` checked against vLLM's own arguments."""
    engine = dict(config["engine"])
    check_vllm_args(engine["vllm_args"])
    needed = engine_token_limit(config)
    if engine["max_num_batched_tokens"] is None:
        engine["max_num_batched_tokens"] = needed
    elif engine["max_num_batched_tokens"] < needed:
        raise ConfigError(
            f"engine.max_num_batched_tokens {engine['max_num_batched_tokens']} is smaller than the largest "
            f"video the frame budget admits ({needed} tokens): vLLM would refuse such videos. Set it to at "
            f"least {needed}, or null to size it from the budget"
        )
    return engine


def check_vllm_args(vllm_args: dict) -> None:
    import difflib

    from vidcap.engine import engine_arg_names

    known = engine_arg_names()
    if known is None or not vllm_args:
        return
    for key in vllm_args:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"engine.vllm_args: '{key}' is not an argument of vLLM's EngineArgs{hint}")


def engine_token_limit(config: dict) -> int:
    """Tokens one engine step must hold so no video the budget admits is refused.

    vLLM sizes its encoder cache (and the encoder's per-step budget) by ``max_num_batched_tokens``; a
    video whose vision tokens exceed it fails as "exceeds the pre-allocated encoder cache size".
    """
    return budget.largest_prompt(frame_params(config)["max_vision_tokens"], config["frames"]["prompt_tokens"])


def merge_settings(config: dict) -> dict:
    return {
        "shards": config["shards"],
        "prompt": config["prompt"],
        "keys": config["keys"],
        "output_style": config["output_style"],
    }


def report_settings(config: dict) -> dict:
    """What the report names besides the output file; engine.env may hold secrets: left out, and so are
    tokens in vllm_args and a password or query in the server's url (vidcap.redact)."""
    from vidcap.redact import redacted_engine

    return {
        "model": config["model"],
        "prompt": config["prompt"],
        "system_prompt": config["system_prompt"],
        "keys": config["keys"],
        "shards": config["shards"],
        "frames": frame_params(config),
        "sampling": config["sampling"],
        "engine": redacted_engine({k: v for k, v in config["engine"].items() if k != "env"}),
        "gallery_sample": config["gallery_sample"],
        "candidates": with_defaults("candidates", config.get("candidates")),
        "quality": with_defaults("quality", config.get("quality")),
        "audit": with_defaults("audit", config.get("audit")),
        "output_format": config.get("output_format", "text"),
    }


def needs_summary_engine(captions_path: str) -> bool:
    """Whether a shard's caption results hold a record to summarise (two or more windows): only then does
    its summary job start an engine. Read when the job is scheduled, after its captions exist."""
    from vidcap.summary import needs_summary

    with open(captions_path, encoding="utf-8") as handle:
        for line in handle:
            # most lines have no windows at all: skip them without parsing
            if '"windows"' in line and needs_summary(json.loads(line)):
                return True
    return False


def summary_gpus(config: dict):
    """The summary rule's gpu resource, from its input: a shard with no record to summarise only copies
    its lines and asks for no GPU (nor, in profiles/slurm, a GPU partition)."""

    derived = bool(derived_params(config))  # every record has derived entries to answer

    def gpus(wildcards, input) -> int:
        return caption_gpus(config) if derived or needs_summary_engine(input.captions) else 0

    return gpus


def summary_partition(input, gpu_partition: str, cpu_partition: str) -> str:
    """For profiles/slurm (a resource expression, evaluated with the job's ``input``, which is all it
    sees): the GPU partition only for a summary job that starts an engine: one answering derived
    caption-set entries (an input named ``derived_entries``, see :func:`derived_entries_input`) or one
    with a record to summarise."""
    if hasattr(input, DERIVED_INPUT) or needs_summary_engine(input.captions):
        return gpu_partition
    return cpu_partition


DERIVED_INPUT = "derived_entries"


def derived_entries_input(config: dict, shard_file: str) -> dict:
    """The summary rule's extra input when derived entries are configured: the shard's records again, under
    a name that tells :func:`summary_partition` this job starts an engine whatever its captions hold."""
    return {DERIVED_INPUT: shard_file} if derived_params(config) else {}


def caption_gpus(config: dict) -> int:
    """GPUs a caption job locks (vidcap.gpus); none when a vllm serve elsewhere does the work."""
    engine = config["engine"]
    return 0 if engine["backend"] == "server" else engine["tensor_parallel_size"]
