"""One vision-token budget per record, shared by its videos and images and split before any decoding.

``frames.max_vision_tokens`` (resolved by vidcap.settings.frame_params: max_model_len - max_tokens -
prompt_tokens) is what all of one record's media may send together. The split:

1. Images first, at their own size (``image_min_pixels``/``image_max_pixels``): an image is never
   shrunk for a video. Their tokens come from the image header, not from decoding.
2. The rest goes to the videos by water-filling in proportion to duration. Each video is offered a
   share of what is left proportional to its duration; a video whose natural plan (the frames and size
   it gets with no budget, from its probe) needs no more than its share keeps that plan, and what it
   leaves is offered again to the others, until the remaining videos all need more than their share.
   Those are capped at their share (whole tokens, rounded down) and reduced by ``frames.reduce`` as a
   video over budget is today (vidcap.budget.plan_video).

A video that is not capped keeps the record's budget as its ``max_vision_tokens``: its frames, pixels
and frame-cache key are exactly those of the same video alone in a record, so one-video records are as
before and a multi-video record within budget shares their cache entries. Only a capped video gets a
``max_vision_tokens`` of its own (and so a cache entry of its own). Pure arithmetic over probes.
"""

from __future__ import annotations

from vidcap import budget


def image_tokens(path: str, params: dict) -> int:
    """Vision tokens of one image at its own size, from its header (0 if unreadable: the record fails
    when the frames step loads it)."""
    size = image_size(path, params)
    factor = int(params.get("patch_factor") or budget.QWEN2_PATCH_FACTOR)
    return 0 if size is None else (size[0] // factor) * (size[1] // factor)


def image_size(path: str, params: dict) -> tuple[int, int] | None:
    """(height, width) the frames step gives an image (vidcap.frames.load_image), from its header only."""
    from PIL import Image

    factor = int(params.get("patch_factor") or budget.QWEN2_PATCH_FACTOR)
    try:
        with Image.open(path) as img:
            width, height = img.size  # EXIF rotation swaps the sides: the token count is the same
        return budget.smart_resize(
            height, width, factor, params["image_min_pixels"], params["image_max_pixels"]
        )
    except (OSError, ValueError, budget.BudgetError):
        return None


def natural_plan(info: dict, params: dict) -> dict:
    """The plan a probed video gets with no token budget: what it would send if nothing capped it."""
    free = {**params, "max_vision_tokens": None}
    return budget.plan_video(
        info["duration"], info["height"], info["width"], free, source_frames=source_frames(info)
    )


def source_frames(info: dict) -> int:
    """Frames the probe found (a compact probe keeps only their count: vidcap.plan)."""
    return info["frame_count"] if "frame_count" in info else len(info["times"])


def water_fill(total: int, durations: list[float], demands: list[int]) -> list[int | None]:
    """Each video's cap (None: its demand fits) when ``total`` tokens are split in proportion to
    ``durations``, a video needing less than its share giving the rest back to the others."""
    caps: list[int | None] = [None] * len(demands)
    left = set(range(len(demands)))
    remaining = total
    while left:
        weight = sum(max(durations[i], 1e-3) for i in left)
        fits = [i for i in left if demands[i] <= remaining * max(durations[i], 1e-3) / weight]
        if not fits:
            break
        for i in fits:
            remaining -= demands[i]
            left.discard(i)
    weight = sum(max(durations[i], 1e-3) for i in left)
    for i in left:
        caps[i] = max(0, int(remaining * max(durations[i], 1e-3) / weight))
    return caps


def video_caps(record_budget: int | None, images: int, videos: list[dict | None], params: dict) -> list:
    """Per video of one record: its own ``max_vision_tokens`` when capped, else None (the record's).

    ``images``: the record's image tokens; ``videos``: each video's probe (None when it failed: it
    takes nothing, as its record fails anyway).
    """
    if record_budget is None or (len(videos) <= 1 and not images):
        return [None] * len(videos)
    demands, durations = [], []
    for info in videos:
        if info is None:
            demands.append(0)
            durations.append(0.0)
            continue
        try:
            demands.append(natural_plan(info, params)["vision_tokens"])
        except budget.BudgetError:  # too extreme to plan at all: it fails in the frames step
            demands.append(0)
        durations.append(float(info["duration"]))
    return water_fill(record_budget - images, durations, demands)


def with_cap(params: dict, cap: int | None) -> dict:
    """Frame parameters for a video capped at ``cap`` tokens (None: ``params`` as they are)."""
    return params if cap is None else {**params, "max_vision_tokens": cap}


def assign_caps(entries: list[dict], wanted: dict, params: dict, probe, threads: int = 1) -> dict:
    """The frames step's jobs with each video's cap: {(kind, path): refs} -> {(kind, path, cap): refs}.

    ``wanted``/``entries``: vidcap.frames.plan_shard_media's. Only records with more than one media
    item are planned (their videos probed once each, ``threads`` at a time, by ``probe(path)``, which
    returns the probe or None); every other job keeps cap None.
    """
    from concurrent.futures import ThreadPoolExecutor

    if params.get("max_vision_tokens") is None:  # no budget to share: nothing to probe
        return {(kind, path, None): refs for (kind, path), refs in wanted.items()}
    shared: dict[int, list] = {}
    for (kind, path), refs in wanted.items():
        for slot, field, i in refs:
            entry = entries[slot]
            if len(entry["videos"]) + len(entry["images"]) > 1 and entry["videos"]:
                shared.setdefault(slot, []).append((field, i, kind, path))
    to_probe = sorted({path for items in shared.values() for field, _, _, path in items if field == "videos"})
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        infos = dict(zip(to_probe, pool.map(probe, to_probe)))
    caps: dict[tuple[int, str, int], int | None] = {}
    images: dict[str, int] = {}
    for slot, items in shared.items():
        videos = sorted((i, path) for field, i, _, path in items if field == "videos")
        pictures = [path for field, _, _, path in items if field == "images"]
        image_total = sum(images.setdefault(p, image_tokens(p, params)) for p in pictures)
        video_cap = video_caps(
            params.get("max_vision_tokens"), image_total, [infos[p] for _, p in videos], params
        )
        for (i, _), cap in zip(videos, video_cap):
            caps[(slot, "videos", i)] = cap
    out: dict = {}
    for (kind, path), refs in wanted.items():
        for ref in refs:
            out.setdefault((kind, path, caps.get(ref)), []).append(ref)
    return out
