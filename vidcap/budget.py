"""How many frames, and how large, one video may send to the model.

Qwen-VL turns every pair of frames (temporal patch 2) into (H/f) x (W/f) tokens, f = patch x merge
(14 x 2 = 28 for Qwen2/2.5-VL, 16 x 2 = 32 for Qwen3-VL). A video must fit the context left after the
prompt and the caption. Over budget, ``frames.reduce`` decides the order: ``pixels_first`` (default, as
qwen_vl_utils for Qwen2/2.5-VL) shrinks frames toward ``min_pixels`` first, then lowers the frame rate;
``fps_first`` lowers the frame rate toward ``min_frames`` first, then shrinks frames. Only if even two
tiny frames do not fit is a video refused. Pure arithmetic, no decoding.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

FRAME_FACTOR = 2  # temporal patch: frame counts are even
QWEN2_PATCH_FACTOR = 28  # patch 14 x spatial merge 2: Qwen2-VL, Qwen2.5-VL
QWEN3_PATCH_FACTOR = 32  # patch 16 x spatial merge 2: Qwen3-VL
# Qwen3-VL adds a "<t seconds>" time stamp text and vision start/end markers to every frame group
QWEN3_GROUP_TOKENS = 10


class BudgetError(ValueError):
    """The video cannot fit the token budget at any size."""


def round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def smart_resize(
    height: int, width: int, factor: int, min_pixels: float, max_pixels: float
) -> tuple[int, int]:
    """Qwen's smart_resize: both sides multiples of ``factor``, pixels within bounds, aspect kept."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise BudgetError(f"aspect ratio {width}x{height} is too extreme (over 200:1)")
    h_bar = max(factor, round_by(height, factor))
    w_bar = max(factor, round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def even_floor(n: float) -> int:
    return max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)


def vision_tokens(n_frames: int, height: int, width: int, factor: int) -> int:
    return VisionGeometry(factor).tokens(n_frames, height, width)


def plan_video(
    seconds: float, height: int, width: int, params: dict, source_frames: int | None = None
) -> dict:
    """Frame count and frame size for a video of ``seconds`` shown at ``width`` x ``height``.

    Returns n_frames, height, width, sample_fps, vision_tokens and a list of notes saying what the
    budget changed. ``params``: fps, min_frames, max_frames, min_pixels, max_pixels, total_pixels,
    max_vision_tokens (None: unlimited), patch_factor, reduce (pixels_first | fps_first: which
    reduction the token budget applies first). ``source_frames``: the frames the source shows in the
    sampled span; no more are sampled (beyond the min_frames pad), as qwen_vl_utils' smart_nframes.
    """
    factor = int(params.get("patch_factor") or QWEN2_PATCH_FACTOR)
    lo = math.ceil(params["min_frames"] / FRAME_FACTOR) * FRAME_FACTOR
    hi = even_floor(params["max_frames"])
    n = even_floor(min(max(seconds * params["fps"], lo), hi))
    notes = []
    if source_frames and n > max(lo, source_frames):
        capped = max(lo, even_floor(source_frames))
        notes.append(f"source shows {source_frames} frames: {n} -> {capped} (no frame sent twice)")
        n = capped
    budget = params.get("max_vision_tokens")
    size = _Sizer(height, width, factor, params)
    h, w = size(n, params["max_pixels"])
    if budget is not None and vision_tokens(n, h, w, factor) > budget:
        order = params.get("reduce")
        if order not in REDUCE_ORDERS:
            raise BudgetError(f"frames.reduce is {order!r}; expected one of {', '.join(REDUCE_ORDERS)}")
        reduce = _pixels_then_fps if order == "pixels_first" else _fps_then_pixels
        n2, h2, w2, what = reduce(n, h, w, lo, budget, size)
        notes.append(f"token budget {budget}: {what}")
        n, h, w = n2, h2, w2
    return {
        "n_frames": n,
        "height": h,
        "width": w,
        "sample_fps": n / seconds if seconds > 0 else None,
        "vision_tokens": vision_tokens(n, h, w, factor),
        "budget_tokens": budget,
        "patch_factor": factor,
        "notes": notes,
    }


REDUCE_ORDERS = ("pixels_first", "fps_first")


class _Sizer:
    """Frame size for n frames under a per-frame pixel cap (and total_pixels)."""

    def __init__(self, height: int, width: int, factor: int, params: dict):
        self.height, self.width, self.factor = height, width, factor
        self.min_pixels, self.max_pixels = params["min_pixels"], params["max_pixels"]
        self.total = params.get("total_pixels")

    def __call__(self, n_frames: int, cap: float) -> tuple[int, int]:
        """Largest size within ``cap`` pixels (at least min_pixels unless the cap is lower)."""
        if self.total:
            cap = min(cap, self.total / n_frames * FRAME_FACTOR)
        f = self.factor
        return smart_resize(self.height, self.width, f, min(self.min_pixels, cap), max(cap, f * f))

    def pair_cap(self, budget: int, n_frames: int) -> float:
        """Pixels per frame that let ``n_frames`` fit ``budget`` tokens."""
        return budget / (n_frames / FRAME_FACTOR) * self.factor * self.factor


def _pixels_then_fps(n, h, w, lo, budget, size):
    """Qwen's order: smaller frames down to min_pixels first, then fewer frames (a lower fps)."""
    f = size.factor
    h2, w2 = size(n, max(size.pair_cap(budget, n), size.min_pixels))
    if vision_tokens(n, h2, w2, f) <= budget:
        return n, h2, w2, f"size {w}x{h} -> {w2}x{h2} (smaller frames)"
    fewer = min(n, even_floor(budget // ((h2 // f) * (w2 // f)) * FRAME_FACTOR))
    if fewer >= lo and vision_tokens(fewer, h2, w2, f) <= budget:
        return fewer, h2, w2, f"size {w}x{h} -> {w2}x{h2}, then frames {n} -> {fewer} (lower fps)"
    return _fewest(n, h, w, lo, budget, size)


def _fps_then_pixels(n, h, w, lo, budget, size):
    """Fewer frames (a lower fps) down to min_frames first, then smaller frames."""
    f = size.factor
    fewer = min(n, even_floor(budget // ((h // f) * (w // f)) * FRAME_FACTOR))
    if fewer >= lo and vision_tokens(fewer, h, w, f) <= budget:
        return fewer, h, w, f"frames {n} -> {fewer} (lower fps)"
    return _fewest(n, h, w, lo, budget, size)


def _fewest(n, h, w, lo, budget, size):
    """min_frames (or fewer, down to one temporal pair) of the largest frames that fit, below
    min_pixels if need be; refused when even two of the smallest frames do not fit."""
    f = size.factor
    fewer = min(n, lo)
    while True:
        h2, w2 = size(fewer, min(size.pair_cap(budget, fewer), size.max_pixels))
        if vision_tokens(fewer, h2, w2, f) <= budget or fewer == FRAME_FACTOR:
            break
        fewer -= FRAME_FACTOR  # even min_frames of the smallest frames do not fit
    if vision_tokens(fewer, h2, w2, f) > budget:
        raise BudgetError(
            f"too long: {fewer} frames of {w2}x{h2} need {vision_tokens(fewer, h2, w2, f)} "
            f"vision tokens, budget {budget}"
        )
    return fewer, h2, w2, f"frames {n} -> {fewer}, size {w}x{h} -> {w2}x{h2}"


@dataclass(frozen=True)
class VisionGeometry:
    """How a model turns pixels into tokens: one token per ``factor`` x ``factor`` pixels per frame pair."""

    factor: int = QWEN2_PATCH_FACTOR  # patch_size x spatial_merge_size
    temporal: int = FRAME_FACTOR
    tokens_per_frame_group: int = 0  # Qwen3-VL writes a "<t seconds>" text and vision markers per group

    def tokens(self, n_frames: int, height: int, width: int) -> int:
        """Placeholder tokens of ``n_frames`` frames (1 for an image) of ``height`` x ``width`` pixels."""
        groups = -(-n_frames // self.temporal)
        grid = max(1, round(height / self.factor)) * max(1, round(width / self.factor))
        return groups * (grid + self.tokens_per_frame_group)


def geometry_for(model: str, hf_config=None) -> VisionGeometry:
    """The model's patch geometry: from a loaded Hugging Face config (e.g. the engine's), else a local
    checkpoint's config.json, else guessed from the model id (Qwen3 names: 32 pixels, others 28)."""
    if hf_config is not None:
        hf_config = getattr(hf_config, "thinker_config", hf_config)  # Qwen2.5-Omni: the thinker's vision
        vision = hf_config.vision_config
        fields = {
            k: getattr(vision, k, None) for k in ("patch_size", "spatial_merge_size", "temporal_patch_size")
        }
        model_type = str(getattr(hf_config, "model_type", ""))
    else:
        config_path = os.path.join(model, "config.json")
        if not os.path.isfile(config_path):
            qwen3 = "qwen3" in model.lower()
            return VisionGeometry(
                QWEN3_PATCH_FACTOR if qwen3 else QWEN2_PATCH_FACTOR,
                FRAME_FACTOR,
                QWEN3_GROUP_TOKENS if qwen3 else 0,
            )
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        model_type = str(config.get("model_type", ""))
        fields = config.get("thinker_config", config).get("vision_config", {})
    if not fields.get("patch_size"):
        return VisionGeometry()
    factor = int(fields["patch_size"]) * int(fields.get("spatial_merge_size") or 2)
    extra = QWEN3_GROUP_TOKENS if model_type.startswith("qwen3") else 0
    return VisionGeometry(factor, int(fields.get("temporal_patch_size") or FRAME_FACTOR), extra)


def patch_factor_for(model: str) -> int:
    """Pixels per side of one vision token: patch size x spatial merge (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
    return geometry_for(model).factor


def video_token_budget(max_model_len: int, max_tokens: int, prompt_tokens: int) -> int:
    """Vision tokens one video may use: the context left after the caption and the prompt text."""
    return max(max_model_len - max_tokens - prompt_tokens, 1)


def largest_prompt(max_vision_tokens: int, prompt_tokens: int) -> int:
    """The longest prompt the budget admits: one video's vision tokens plus the prompt text."""
    return max_vision_tokens + prompt_tokens
