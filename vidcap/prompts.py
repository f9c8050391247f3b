"""What the model gets for one record: chat text, pre-sampled media with their metadata, a seed.

Frames arrive pre-sampled and pre-sized from the frames step (uint8 THWC arrays in the cache), so
building a request only memory-maps them; a request is built just before it is submitted and dropped
once its answer is back.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np

from vidcap.budget import FRAME_FACTOR, VisionGeometry
from vidcap.frames import load_frames


def record_seed(global_seed: int, digest: str) -> int:
    """Per-record sampling seed: a rebuild (or a move to another shard) samples the same caption."""
    return int(hashlib.sha256(f"{global_seed}:{digest}".encode()).hexdigest()[:8], 16)


def sampling_seed(sampling: dict, digest: str) -> int | None:
    # greedy needs no seed, and seeded requests take vLLM's slower per-request sampling path
    if sampling["seed"] is None or sampling["temperature"] <= 0:
        return None
    return record_seed(int(sampling["seed"]), digest)


def build_messages(system_prompt: str, n_images: int, n_videos: int, prompt: str) -> list[dict]:
    # images first, then videos, then the text, as DataFlow-MM does
    content = (
        [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": prompt}]
    )
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_template(model: str, tokenizer):
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
        return apply(
            build_messages(system_prompt, n_images, n_videos, prompt),
            tokenize=False,
            add_generation_prompt=True,
        )

    return render


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
    frames = load_frames(video)  # raw files memory-mapped (read-only); compact ones decoded into a new array
    indices = list(meta["frames_indices"])
    if keep is None:
        if not frames.flags.writeable:
            frames = np.array(frames)  # torch wants writable arrays
    else:
        frames = frames[keep]
        indices = [indices[i] for i in keep]
    metadata = {
        "fps": float(meta["fps"]),
        "duration": float(meta["duration"]),
        "total_num_frames": int(meta["total_num_frames"]),
        "frames_indices": indices,
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    return (frames, metadata)


def image_array(image: dict) -> np.ndarray:
    return np.array(load_frames(image))


def vision_tokens(
    entry: dict,
    keep: list[list[int] | None] | None = None,
    geometry: VisionGeometry | None = None,
    timestamp_tokens=None,
) -> int:
    """Placeholder tokens the model will see for one manifest entry's media (``keep``: frames per video).

    Qwen3-VL writes each frame group as ``<t seconds>`` text, vision start, its tokens, vision end, in place
    of the template's video pad token: with ``timestamp_tokens`` (seconds -> tokens of that text, from the
    model's tokenizer) the count is exact, else the group overhead is the geometry's estimate.
    """
    geometry = geometry or VisionGeometry()
    total = 0
    for i, video in enumerate(entry["videos"]):
        meta = video["meta"]
        indices = list(meta["frames_indices"])
        if keep is not None and keep[i] is not None:
            indices = [indices[k] for k in keep[i]]
        total += geometry.tokens(len(indices), meta["height"], meta["width"])
        if geometry.tokens_per_frame_group and timestamp_tokens is not None:
            stamps = group_times(indices, float(meta["fps"]), geometry.temporal)
            overhead = sum(timestamp_tokens(t) + 2 for t in stamps)  # "<t seconds>", vision start and end
            total += (
                overhead - len(stamps) * geometry.tokens_per_frame_group
            )  # exact, instead of the estimate
    for image in entry["images"]:
        total += VisionGeometry(geometry.factor).tokens(1, image["meta"]["height"], image["meta"]["width"])
    return total


def group_times(indices: list[int], fps: float, temporal: int) -> list[float]:
    """Qwen3-VL's time stamp per frame group: the mean time of the group's first and last frame."""
    if len(indices) % temporal:
        indices = indices + [indices[-1]] * (temporal - len(indices) % temporal)
    times = [i / fps for i in indices]
    return [(times[k] + times[k + temporal - 1]) / 2 for k in range(0, len(times), temporal)]


def frame_bytes(entry: dict) -> int:
    """Bytes of the uint8 frames one record sends (what its request holds in memory, before processing)."""
    total = 0
    for item in entry["videos"] + entry["images"]:
        meta = item["meta"]
        total += len(meta.get("frames_indices") or [0]) * meta["height"] * meta["width"] * 3
    return total


def unanswered_meta(frames: int, error: str | None = None) -> dict:
    """The caption_meta of a request before its answer (a whole record's or one window's): an error
    until the engine answers."""
    return {
        "status": "error",
        "error": error,
        "frames": frames,
        "halved": False,
        "prompt_tokens": None,
        "output_tokens": None,
        "finish_reason": None,
        "seed": None,
        "attempts": 0,
    }


@dataclass
class Pending:
    """A record on its way to the engine."""

    slot: int
    digest: str
    entry: dict
    prompt: str
    seed: int | None = None
    text: str = ""
    keep: list = field(default_factory=list)  # per video: kept frame slots, None for all
    halved: bool = False
    key: str = ""  # its result-store key: what its answer depends on (vidcap.result_keys)
    # re-sampling after a degenerate answer (vidcap.judge): attempt number, its seed and presence penalty
    attempt: int = 0
    first_seed: int | None = None
    presence_penalty: float | None = None  # None: the sampling section's
    rejected: list = field(default_factory=list)
    tried: list = field(default_factory=list)
    ask: object = (
        None  # a caption-set entry (vidcap.caption_set.Ask): its settings; None: the primary caption
    )

    def __post_init__(self):
        self.first_seed = self.seed

    def halve(self) -> bool:
        """Keep half of every video's frames; False when it was already halved or has no video."""
        if self.halved or not self.entry["videos"]:
            return False
        self.keep = [
            kept_frames(len(v["meta"]["frames_indices"]), len(v["meta"]["frames_indices"]) // 2)
            for v in self.entry["videos"]
        ]
        self.halved = True
        return True

    def frames_sent(self) -> int:
        return sum(
            len(v["meta"]["frames_indices"]) if k is None else len(k)
            for v, k in zip(self.entry["videos"], self.keep)
        )
