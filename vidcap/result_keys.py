"""What every stored result depends on: the keys of :mod:`vidcap.store`, and each setting's part in them.

A record's key is a hash of the caption settings with the model's weights (:func:`caption_identity`),
the prompt the record is asked (its own, with ``keys.prompt``, or the configured one) and its media's
frame-cache keys, which name the file (real path, size, mtime) and the frame parameters. Nothing about
where the record sits (shard, position, other fields) is in it, so growing, resharding or reordering a
dataset finds every finished record again. A window's key adds its span; a summary's key is its
settings and the exact text it is asked, which holds the window captions (a visual caption-set entry's
summary: that entry's settings and window answers); a derived caption-set entry's
key is its settings with the summary engine's and the text it rewrites.

:data:`SETTING_ROLES` names, for every setting in the schema, how it reaches a result. A test walks the
schema: a new setting without a role fails it, and changing any ``caption`` setting must change the key.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidcap.provenance import canonical_hash

KEY_VERSION = 1  # bump when what a stored result holds or means changes

CAPTION = "caption"  # the answer itself: in every record and window key
FRAMES = "frames"  # which frames are taken: in the frame-cache keys inside every result key
SUMMARY = "summary"  # a long video's summary only: in the summary key
OUTPUT = "output"  # how finished results are written out or reported: no answer changes
RUN = "run"  # where, how fast and how many at once: no answer changes
ASR = "asr"  # the transcript step only: in the transcript key, and through the transcript in caption keys
SET = "set"  # one caption-set entry only: in that entry's keys, never in the primary caption's

_SAMPLING = ("temperature", "top_p", "repetition_penalty", "max_tokens", "top_k", "presence_penalty")
_QUALITY = ("retries", "min_words", "repeat_ngram", "max_repeat_ngram_share", "max_compression_ratio")
_FRAMES = ("backend", "fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels")
_ENGINE_RUN = (
    "device",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enforce_eager",
    "mm_processor_cache_gb",
    "gpu_wait_timeout",
    "stall_timeout",
    "cpu_kvcache_space_gb",
    "threads",
    "in_flight_gb",
    "env",
    "url",
    "api_key_env",
    "concurrency",
    "retries",
    "request_timeout",
)

SETTING_ROLES = {
    "input": FRAMES,  # its folder is the default media_root: through the real paths, as media_root
    "output": OUTPUT,
    "results": RUN,
    "shards": RUN,
    "media_root": FRAMES,  # resolves relative paths: the real path is in the frame-cache key
    "media_root_only": FRAMES,
    "model": CAPTION,
    "prompt": CAPTION,
    "system_prompt": CAPTION,
    "output_style": OUTPUT,
    "output_format": CAPTION,
    "output_schema": CAPTION,
    "gallery_sample": OUTPUT,
    "keys.video": FRAMES,
    "keys.image": FRAMES,
    "keys.conversation": OUTPUT,
    "keys.caption": OUTPUT,
    "keys.prompt": CAPTION,  # through the prompt each record is asked
    **{f"sampling.{k}": CAPTION for k in (*_SAMPLING, "min_tokens", "seed")},
    **{f"frames.{k}": FRAMES for k in _FRAMES},
    "frames.max_vision_tokens": FRAMES,
    "frames.reduce": FRAMES,
    "frames.prompt_tokens": FRAMES,  # through the vision-token budget it leaves
    "frames.patch_factor": FRAMES,
    "frames.image_min_pixels": FRAMES,
    "frames.image_max_pixels": FRAMES,
    "frames.keep": RUN,
    "frames.cache_codec": FRAMES,  # h264's pixels are not the raw ones: its tag is in the frame-cache key
    "frames.decoder_threads": RUN,
    "frames.timeout": RUN,
    "frames.threads": RUN,
    "engine.max_model_len": CAPTION,  # decides halving and "too long"
    "engine.dtype": CAPTION,  # the numerics of every token
    "engine.vllm_args": CAPTION,  # may hold quantization or other numerics
    "engine.backend": CAPTION,
    "engine.served_model": CAPTION,
    **{f"engine.{k}": RUN for k in _ENGINE_RUN},
    "candidates.n": CAPTION,
    "candidates.keep": CAPTION,
    **{f"quality.{k}": CAPTION for k in (*_QUALITY, "language", "min_script_share")},
    "quality.presence_penalty_step": CAPTION,
    "long_video.mode": FRAMES,
    "long_video.window_frames": FRAMES,
    "long_video.min_window_frames": FRAMES,
    "long_video.shots": FRAMES,
    "long_video.summary_prompt": SUMMARY,
    "long_video.summary_model": SUMMARY,
    "long_video.summary_max_tokens": SUMMARY,
    "caption_set": SET,  # each entry's settings reach only that entry's keys
    "audio.mode": CAPTION,  # in caption_params unless off: native sends the audio, transcript its text
    "audio.asr_model": ASR,
    "audio.language": ASR,
    # in caption_params with mode transcript only, and through the transcript in the prompt (vidcap.transcript_prompt)
    "audio.transcript_tokens": ASR,
    "audit.near_duplicate_jaccard": OUTPUT,
    "audit.opening_words": OUTPUT,
    "audit.top": OUTPUT,
    "audit.group_indices": OUTPUT,
}


def model_weights(model_id: dict) -> dict:
    """What names a model's weights in a key (:func:`vidcap.provenance.model_identity` without the folder
    or hub name it was given by: its weights hash or hub revision); the name only when nothing else is known."""
    return {k: v for k, v in model_id.items() if k != "model"} or {"model": model_id.get("model")}


def file_identity(path: str) -> list:
    """A media file as keys name it: its real path (links and other spellings of one file share results),
    size and mtime; the path as given when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def caption_identity(params: dict, model_id: dict) -> str:
    """What every answer of a caption job depends on besides its record: ``params`` (from
    :func:`vidcap.settings.caption_params`) without the prompt and keys, which act through each record,
    and the model's identity (:func:`vidcap.provenance.model_identity`: weights hash or hub revision)."""
    # the caption set's entries reach only their own keys (vidcap.caption_set.asks), never this one
    fields = {k: v for k, v in params.items() if k not in ("prompt", "keys", "model", "caption_set")}
    weights = model_weights(model_id)
    return canonical_hash([KEY_VERSION, "caption", weights, fields])


def summary_identity(params: dict, model_id: dict) -> str:
    """As :func:`caption_identity`, for the summary step's params (vidcap.settings.summary_params)."""
    fields = {k: v for k, v in params.items() if k not in ("prompt", "model")}
    weights = model_weights(model_id)
    return canonical_hash([KEY_VERSION, "summary", weights, fields])


def derived_identity(params: dict, model_id: dict) -> str:
    """As :func:`caption_identity`, for one derived caption-set entry (vidcap.derived): its resolved
    settings and the summary engine's."""
    weights = model_weights(model_id)
    return canonical_hash([KEY_VERSION, "derived", weights, params])


def media_keys(entry: dict) -> list:
    """Each video's and image's frames as the cache names them (file identity and frame parameters)."""
    return [_item_key(item) for item in entry["videos"] + entry["images"]]


def _item_key(item: dict | None):
    if not item:
        return None
    if "windows" in item:
        return [[w["start"], w["end"], *_heard(w)] for w in item["windows"]]
    if "error" in item:
        return ["error", item["error"]]
    stem = _heard(item)
    return stem[0] if len(stem) == 1 else stem


def _heard(item: dict) -> list:
    """An item's frame-cache key, and with audio.mode native its audio's key or note (vidcap.native_audio)."""
    audio = item.get("audio")
    return [_stem(item.get("frames"))] + ([audio.get("key") or audio.get("note")] if audio else [])


def _stem(frames: str | None) -> str | None:
    # the cache file's name is its key; the folder (shared cache, or a shard's own) is not
    return Path(frames).stem if frames else None


def record_key(identity: str, prompt: str, entry: dict) -> str:
    return canonical_hash(["record", identity, prompt, media_keys(entry)])[:32]


def window_key(identity: str, text: str, video: dict, clock=None) -> str:
    """A window's request: its own frames (``video``: path, frames, meta) and its prompt with the span;
    for JSON answers also the clock its event times are read in (:class:`vidcap.structured.Clock`), which
    is applied before the answer is stored."""
    heard = _heard(video)
    parts = ["window", identity, text, heard[0] if len(heard) == 1 else heard]
    if clock is not None:
        parts.append([clock.low, clock.high, clock.shift])
    return canonical_hash(parts)[:32]


def summary_key(identity: str, text: str) -> str:
    return canonical_hash(["summary", identity, text])[:32]


def derived_key(identity: str, source: str) -> str:
    """A derived entry's answer: its settings' identity and the exact text it rewrites."""
    return canonical_hash(["derived", identity, source])[:32]


def content_digest(media: list, prompt: str) -> str:
    """What a request's sampling seed is drawn from: its media's frame-cache keys (:func:`media_keys`) and
    its prompt, so the seed never depends on the record's other fields, its place in the input, how its
    paths are spelt or which backend answers; two requests with one key always get one seed."""
    return canonical_hash(["seed", media, prompt])[:20]
