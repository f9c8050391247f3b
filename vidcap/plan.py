"""A build's size before any GPU work: ``python -m vidcap plan --configfile my.yaml`` (docs/plan.md).

Reads the build's config as the Snakefile does (vidcap.config.build_config), probes each distinct video
once (packets only, no decoding: vidcap.decode.probe) and plans every record as the frames step will:
the record's token budget split among its media (vidcap.record_budget), each video's frames and size
(vidcap.budget.plan_video), each item's frame-cache key (vidcap.frames.cache_key) and so the record's
result-store key (vidcap.result_keys.record_key), which says whether a build would send it at all.

Exact up to ``exact`` records; beyond that the figures are scaled up from a random sample of records,
each with its 95% sampling error (normal approximation, finite-population corrected). Shot cuts are
found only by decoding, so a windowed long video's window edges (and its tokens) are estimated unless
its windows are in the frame cache already.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidcap import audio_tokens, budget, decode, native_audio, record_budget, sizing, windows
from vidcap.config import with_defaults
from vidcap.frames import cache_key
from vidcap.media_paths import escapes_root
from vidcap.records import iter_records, media_list, record_prompt, resolve_media
from vidcap.result_keys import caption_identity, record_key, window_key
from vidcap.settings import caption_params, caption_params_of_job, frame_params, frames_cache_dir, media_root
from vidcap.store import ResultStore

DEFAULT_EXACT = 20000  # records planned one by one; above this, a sample
DEFAULT_SAMPLE = 2000  # records in that sample: about +-2% on a total whose records vary by +-50%
Z95 = 1.96
NPY_HEADER_BYTES = 128
SIDECAR_BYTES = 900  # a video's JSON sidecar without its per-frame lists (measured: 0.8-1 KB)
SIDECAR_BYTES_PER_FRAME = 24  # frames_indices and timestamps, one number each per frame
IMAGE_SIDECAR_BYTES = 120


# raw frames over their compact cache file, measured on the 10 real clips of bench/cache_codec.py (docs/cache.md:
# 20.6x the sources raw, 1.87x as h264, 4.38x as ffv1); content decides it (per clip 0.4x to 20x the source), so
# for a compact codec the disk figure is an estimate, exact only for npy
RAW_OVER_COMPACT = {"npy": 1.0, "h264": 20.60 / 1.87, "ffv1": 20.60 / 4.38}


def cache_entry_bytes(kind: str, n_frames: int, height: int, width: int, codec: str = "npy") -> int:
    """Disk one frame-cache entry takes: its frames (raw uint8 RGB in a .npy; a compact codec's file
    estimated from them, :data:`RAW_OVER_COMPACT`) plus a JSON sidecar. The one place that knows the
    cache's format."""
    frames = n_frames * height * width * 3 / RAW_OVER_COMPACT[codec] + NPY_HEADER_BYTES
    if kind == "image":
        return int(frames) + IMAGE_SIDECAR_BYTES
    return int(frames) + SIDECAR_BYTES + SIDECAR_BYTES_PER_FRAME * n_frames


@dataclass
class RecordPlan:
    """What one record costs; ``entries``: its frame-cache entries {key: bytes}."""

    videos: int = 0
    images: int = 0
    seconds: float = 0.0
    vision_tokens: int = 0
    audio_tokens: int = 0  # audio.mode native: each video's sound, as if every video had some
    prompt_tokens: int = 0
    requests: int = 0  # sent to the engine if not stored: 1, or one per window
    stored: bool = False
    error: str | None = None
    windowed: bool = False
    estimated: bool = False  # windows planned without their shot cuts
    entries: dict = field(default_factory=dict)


class TextTokens:
    """Tokens of a request's chat text without its media placeholders, with the model's own tokenizer
    and chat template (the processor's, as the caption job uses) if the model is on this machine (a
    folder or the Hugging Face cache; never downloaded); else None."""

    def __init__(self, model: str, system_prompt: str):
        self.system_prompt = system_prompt
        self.tokenizer = self.template = None
        folder = local_model_folder(model)
        if folder is None:
            return
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception:  # noqa: BLE001 -- no usable tokenizer: prompt tokens become an upper bound
            return
        self.template = processor_template(folder)

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    @functools.lru_cache(maxsize=4096)  # noqa: B019 -- one planner per run
    def __call__(self, n_images: int, n_videos: int, prompt: str) -> int | None:
        if self.tokenizer is None:
            return None
        from vidcap.prompts import build_messages

        text = self.tokenizer.apply_chat_template(
            build_messages(self.system_prompt, n_images, n_videos, prompt),
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=True,
        )
        return len(self.tokenizer.encode(text, add_special_tokens=False)) - n_images - n_videos


def local_model_folder(model: str) -> Path | None:
    """The model's folder on this machine: itself, or its snapshot in the Hugging Face cache."""
    if Path(model, "config.json").is_file():
        return Path(model)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 -- not a hub id
        return None
    return Path(found).parent if isinstance(found, str) else None


def processor_template(folder: Path) -> str | None:
    """The processor's chat template (what vLLM and the caption job render with), read from its file
    without loading the processor (which imports torch and torchvision); None: the tokenizer's own."""
    import json

    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


class Planner:
    """Plans records of one build; probes and cache keys are kept per file, so records sharing videos
    cost a probe once."""

    def __init__(self, config: dict):
        from vidcap.provenance import model_identity

        self.config = config
        self.keys = config["keys"]
        self.root = media_root(config)
        self.only = config["media_root_only"]
        self.params = with_defaults("frames", frame_params(config))
        self.record_budget = self.params["max_vision_tokens"]
        self.long_video = {
            k: config["long_video"][k] for k in ("mode", "window_frames", "min_window_frames", "shots")
        }
        self.cache_dir = Path(frames_cache_dir(config, "0"))
        self.store = ResultStore(f"{config['results'].rstrip('/')}/store")
        self.identity = caption_identity(
            caption_params_of_job(caption_params(config)), model_identity(config["model"])
        )
        self.geometry = budget.geometry_for(config["model"])
        self.text = TextTokens(config["model"], config["system_prompt"])
        native = native_audio.is_native(config)
        self.audio_chunk = audio_tokens.chunk_seconds_of(config["model"]) if native else None
        self.probes: dict[str, dict | str] = {}
        self.keys_memo: dict = {}
        self.probe_seconds = 0.0

    # --------------------------------------------------------------------------------- per file
    def probe(self, path: str) -> dict | str:
        """A compact probe (duration, size, frame count) or the reason it failed; once per file."""
        if path not in self.probes:
            started = time.monotonic()
            try:
                info = decode.probe(path, started + float(self.params["timeout"]))
                self.probes[path] = {
                    "duration": info["duration"],
                    "height": info["height"],
                    "width": info["width"],
                    "frame_count": len(info["times"]),
                }
            except Exception as exc:  # noqa: BLE001 -- the frames step fails this record too
                self.probes[path] = str(exc) or type(exc).__name__
            self.probe_seconds += time.monotonic() - started
        return self.probes[path]

    def video_paths(self, record: dict) -> list[str]:
        return [resolve_media(v, self.root) for v in media_list(record, self.keys["video"])]

    def probe_all(self, paths: list[str], threads: int, off: bool | None) -> None:
        """Probe ``paths`` ``threads`` at a time (each mostly waits on I/O or a child ffprobe)."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for _ in tqdm(
                pool.map(self.probe, paths),
                total=len(paths),
                desc="probing",
                unit=" videos",
                disable=off,
                leave=False,
            ):
                pass

    def key(self, kind: str, path: str, params: dict) -> str:
        memo = (kind, path, params.get("max_vision_tokens"), kind == "long")
        if memo not in self.keys_memo:
            self.keys_memo[memo] = cache_key(path, kind, params)
        return self.keys_memo[memo]

    # ------------------------------------------------------------------------------- per record
    def plan(self, record: dict) -> RecordPlan:
        out = RecordPlan()
        videos = media_list(record, self.keys["video"])
        images = media_list(record, self.keys["image"])
        out.videos, out.images = len(videos), len(images)
        if not videos and not images:
            out.error = "no media"
            return out
        if self.only:
            refused = next((m for m in videos + images if escapes_root(m)), None)
            if refused:
                out.error = f"refused by media_root_only: {refused}"
                return out
        video_paths = self.video_paths(record)
        image_paths = [resolve_media(i, self.root) for i in images]
        infos = [self.probe(p) for p in video_paths]
        out.seconds = sum(i["duration"] for i in infos if isinstance(i, dict))
        failed = next((i for i, info in enumerate(infos) if isinstance(info, str)), None)
        if failed is not None:  # named as the frames step names it
            out.error = f"{os.path.basename(video_paths[failed])}: {infos[failed]}"
            return out
        prompt = record_prompt(record, self.keys, self.config["prompt"])
        if len(videos) == 1 and not images and self._windowed(infos[0]):
            return self._plan_windows(out, video_paths[0], infos[0], prompt)
        try:
            items = self._plan_images(out, image_paths) + self._plan_videos(out, video_paths, infos)
        except (budget.BudgetError, ValueError) as exc:
            out.error = str(exc)
            return out
        text = self.text(len(images), len(videos), prompt)
        out.prompt_tokens += self.config["frames"]["prompt_tokens"] if text is None else text
        out.requests = 1
        # the caption job's entry: videos, then images, each named by its frame-cache key
        entry = {"videos": items[len(images) :], "images": items[: len(images)]}
        out.stored = self.store.has(record_key(self.identity, prompt, entry))
        return out

    def _plan_images(self, out: RecordPlan, paths: list[str]) -> list[dict]:
        items = []
        for path in paths:
            size = record_budget.image_size(path, self.params)
            if size is None:
                raise ValueError(f"{os.path.basename(path)}: not a readable image")
            tokens = budget.VisionGeometry(self.geometry.factor).tokens(1, *size)
            out.vision_tokens += tokens
            out.prompt_tokens += tokens
            key = self.key("image", path, self.params)
            out.entries[key] = cache_entry_bytes("image", 1, *size, codec=self.params["cache_codec"])
            items.append({"frames": f"{key}.npy"})
        return items

    def _plan_videos(self, out: RecordPlan, paths: list[str], infos: list[dict]) -> list[dict]:
        caps = record_budget.video_caps(self.record_budget, out.vision_tokens, infos, self.params)
        items = []
        for path, info, cap in zip(paths, infos, caps):
            params = record_budget.with_cap(self.params, cap)
            plan = budget.plan_video(
                info["duration"], info["height"], info["width"], params, record_budget.source_frames(info)
            )
            out.vision_tokens += plan["vision_tokens"]
            out.prompt_tokens += self.geometry.tokens(plan["n_frames"], plan["height"], plan["width"])
            self._hear(out, info["duration"])
            key = self.key("video", path, params)
            out.entries[key] = cache_entry_bytes(
                "video", plan["n_frames"], plan["height"], plan["width"], codec=self.params["cache_codec"]
            )
            items.append({"frames": f"{key}.npy"})
        return items

    def _hear(self, out: RecordPlan, seconds: float) -> None:
        """audio.mode native: the audio tokens of ``seconds`` of sound (the frames' span is nearly the
        video's, or the window's), counted as if the video has an audio track: an upper bound."""
        if self.audio_chunk is None:
            return
        tokens = audio_tokens.audio_tokens(round(seconds * native_audio.audio_track.RATE), self.audio_chunk)
        out.audio_tokens += tokens + audio_tokens.MARKERS
        out.prompt_tokens += tokens + audio_tokens.MARKERS

    def _windowed(self, info: dict) -> bool:
        mode = self.long_video["mode"]
        return mode == "windows" or (
            mode == "auto"
            and windows.is_long(info["duration"], self.params["fps"], self.long_video["window_frames"])
        )

    def _plan_windows(self, out: RecordPlan, path: str, info: dict, prompt: str) -> RecordPlan:
        """A long video alone in its record: one request per window (vidcap.long_frames, vidcap.windowed)."""
        from vidcap.atomic import read_json
        from vidcap.long_frames import window_frame_count
        from vidcap.windows import clip_phrase

        out.windowed = True
        params, lv = self.params, self.long_video
        key = self.key("long", path, {**params, "long_video": lv})
        item_path = self.cache_dir / key[:2] / f"{key}.json"
        if item_path.exists():  # extracted before: its windows, cuts and all, are known exactly
            spans = [(w["start"], w["end"], w.get("meta")) for w in read_json(item_path)["windows"]]
        else:
            out.estimated = lv["shots"]
            fps, wf = params["fps"], lv["window_frames"]
            span = windows.window_seconds(fps, wf)
            src_fps = record_budget.source_frames(info) / max(info["duration"], 1e-6)
            nominal = budget.plan_video(
                span, info["height"], info["width"], params, source_frames=max(2, round(span * src_fps))
            )
            size = (nominal["height"], nominal["width"])
            spans = []
            for start, end in windows.plan_windows(info["duration"], fps, wf, lv["min_window_frames"]):
                n = window_frame_count(end - start, round((end - start) * fps), info, params, size)
                spans.append((start, end, {"frames_indices": [0] * n, "height": size[0], "width": size[1]}))
        stored = True
        for i, (start, end, meta) in enumerate(spans):
            if meta is None:  # a window that did not decode: its error, never sent
                continue
            n, h, w = len(meta["frames_indices"]), meta["height"], meta["width"]
            out.vision_tokens += budget.vision_tokens(n, h, w, self.geometry.factor)
            out.prompt_tokens += self.geometry.tokens(n, h, w)
            self._hear(out, end - start)
            text = self.text(0, 1, f"{clip_phrase(start, end)} {prompt}")
            out.prompt_tokens += self.config["frames"]["prompt_tokens"] if text is None else text
            out.entries[f"{key}-w{i:03d}"] = cache_entry_bytes(
                "video", n, h, w, codec=self.params["cache_codec"]
            )
            out.requests += 1
            text_key = f"{clip_phrase(start, end)} {prompt}"
            stored = stored and self.store.has(
                window_key(self.identity, text_key, {"frames": f"{key}-w{i:03d}.npy"})
            )
        out.stored = stored and not out.estimated
        return out


# ------------------------------------------------------------------------------------------ totals
SUMMED = ("videos", "images", "seconds", "vision_tokens", "audio_tokens", "prompt_tokens", "requests")


def plan_build(
    config: dict,
    exact: int = DEFAULT_EXACT,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    progress: bool | None = None,
) -> dict:
    """The build's figures: exact when it has at most ``exact`` records, else from ``sample`` of them."""
    from tqdm import tqdm

    started = time.monotonic()
    planner = Planner(config)
    keys = config["keys"]
    off = None if progress is None else not progress  # None: a bar on a terminal only

    def records(desc: str, chosen: set | None = None, total: int | None = None):
        bar = tqdm(desc=desc, total=total, unit=" records", disable=off, leave=False)
        with bar:
            for index, record in iter_records(config["input"], keys):
                if chosen is None or index in chosen:
                    bar.update()
                    yield record

    total = sum(1 for _ in records("reading records"))
    chosen = None
    if total > exact:
        chosen = set(random.Random(seed).sample(range(total), min(sample, total)))
    n = total if chosen is None else len(chosen)
    paths = set()
    for record in records("listing videos", chosen, n):
        paths.update(planner.video_paths(record))
    planner.probe_all(sorted(paths), int(config["frames"]["threads"]), off)
    rows = [planner.plan(record) for record in records("planning", chosen, n)]
    summary = summarize(rows, total)
    summary.update(
        input=config["input"],
        probed_files=len(planner.probes),
        probe_seconds=round(planner.probe_seconds, 3),
        plan_seconds=round(time.monotonic() - started, 3),
        record_budget=planner.record_budget,
        text_tokens_exact=planner.text.exact,
        cache_dir=str(planner.cache_dir),
        keep=config["frames"]["keep"],
        cache_codec=planner.params["cache_codec"],
        tensor_parallel_size=config["engine"]["tensor_parallel_size"],
    )
    return summary


def summarize(rows: list[RecordPlan], total: int) -> dict:
    """Totals over planned records (``total`` records in all): exact if every record was planned, else
    scaled up, with the half-width of each total's 95% interval in ``<name>_error``."""
    n = len(rows)
    scale = total / n if n else 0.0
    exact = n == total
    per_record = {
        **{name: [getattr(r, name) for r in rows] for name in SUMMED},
        "records_errors": [1 if r.error else 0 for r in rows],
        "records_stored": [1 if r.stored and not r.error else 0 for r in rows],
        "records_to_send": [1 if not r.error and not r.stored else 0 for r in rows],
        "windowed": [1 if r.windowed else 0 for r in rows],
        "estimated": [1 if r.estimated else 0 for r in rows],
        "requests_to_send": [r.requests if (not r.error and not r.stored) else 0 for r in rows],
        "prompt_tokens_to_send": [r.prompt_tokens if (not r.error and not r.stored) else 0 for r in rows],
        "cache_bytes": _shared_bytes(rows),
    }
    out: dict = {
        "records": total,
        "planned": n,
        "exact": exact,
    }
    for name, values in per_record.items():
        out[name] = sum(values) * scale if not exact else sum(values)
        out[f"{name}_error"] = 0.0 if exact else _error(values, total)
    out["distinct_cache_entries"] = len({k for r in rows for k in r.entries})
    out["errors_example"] = next((r.error for r in rows if r.error), None)
    return out


def _shared_bytes(rows: list[RecordPlan]) -> list[float]:
    """Each record's share of the cache: an entry's bytes split among the planned records that use it
    (a video listed by several records is extracted once)."""
    users: dict[str, int] = {}
    for r in rows:
        for key in r.entries:
            users[key] = users.get(key, 0) + 1
    return [sum(b / users[k] for k, b in r.entries.items()) for r in rows]


def _error(values: list[float], total: int) -> float:
    """Half-width of the 95% interval of ``total`` x mean(values), from a simple random sample."""
    n = len(values)
    if n < 2:
        return float("inf")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Z95 * total * math.sqrt(var / n) * math.sqrt(max(0.0, 1 - n / total))


# ------------------------------------------------------------------------------------------ report
def gpu_hours(
    summary: dict, rate: float | None = None, tokens_per_second: float | None = None
) -> tuple[float, str]:
    """GPU-hours of the requests a build would send, and how they were reckoned.

    ``rate``: requests (records) per second per engine; ``tokens_per_second``: prompt tokens per second
    per engine; neither: vidcap.sizing.DEFAULT_RATE, labelled as a default. An engine holds
    ``engine.tensor_parallel_size`` GPUs.
    """
    gpus = summary["tensor_parallel_size"]
    if tokens_per_second:
        seconds = summary["prompt_tokens_to_send"] / tokens_per_second
        how = f"at {tokens_per_second:,.0f} prompt tokens/s per engine (given)"
    else:
        per_second = rate or sizing.DEFAULT_RATE
        seconds = summary["requests_to_send"] / per_second
        how = f"at {per_second:g} records/s per engine ({'given' if rate else 'DEFAULT, not measured: pass --rate'})"
    return seconds / 3600 * gpus, f"{how}, {gpus} GPU(s) per engine"


def format_plan(summary: dict, rate: float | None = None, tokens_per_second: float | None = None) -> str:
    exact = summary["exact"]

    def figure(name: str, fmt=lambda v: f"{round(v):,}") -> str:
        value = summary[name]
        if exact:
            return fmt(value)
        return f"~{fmt(value)} +- {fmt(summary[name + '_error'])}"

    how = (
        "exact"
        if exact
        else f"estimated from a random sample of {summary['planned']:,} records; +- is the 95% sampling error"
    )
    vision = (
        f"vision tokens: {summary['vision_tokens']}"
        if exact
        else f"vision tokens: ~{round(summary['vision_tokens'])} +- {round(summary['vision_tokens_error'])}"
    )
    if summary["estimated"]:
        vision += " (windows without their shot cuts: see the windowed line)"
    text_note = (
        "text counted with the model's tokenizer"
        if summary["text_tokens_exact"]
        else "text counted as frames.prompt_tokens: the model's tokenizer is not on this machine"
    )
    where = summary["cache_dir"] if summary["keep"] else "each shard's folder, deleted after its captions"
    hours, hours_how = gpu_hours(summary, rate, tokens_per_second)
    lines = [
        f"records: {summary['records']:,} ({how})",
        f"videos: {figure('videos')} ({figure('seconds', _human_seconds)} of video); "
        f"images: {figure('images')}",
        vision,
        f"expected prompt tokens: {figure('prompt_tokens')} ({text_note})",
        f"frame cache: {figure('cache_bytes', _human_bytes)} at {where} "
        + (
            "(raw uint8 frames: exact)"
            if summary.get("cache_codec", "npy") == "npy"
            else f"(frames.cache_codec {summary['cache_codec']}: estimated from the raw frames, content decides "
            "it; docs/cache.md)"
        ),
        f"stored results: {figure('records_stored')} records; to send: {figure('records_to_send')} records, "
        f"{figure('requests_to_send')} requests, {figure('prompt_tokens_to_send')} prompt tokens",
        f"GPU-hours: {hours:,.2f} {hours_how}" if hours >= 1 else f"GPU-hours: {hours:.2g} {hours_how}",
    ]
    if summary.get("audio_tokens"):
        lines.append(
            f"audio tokens: {figure('audio_tokens')} (audio.mode native, 25 a second: counted as if every video "
            "had sound, and answers with audio are not looked up: upper bounds; docs/audio-native.md)"
        )
    if summary["records_errors"]:
        lines.append(
            f"errors before any GPU work: {figure('records_errors')} records, e.g. {summary['errors_example']}"
        )
    if summary["windowed"]:
        lines.append(
            f"windowed long videos: {figure('windowed')} records"
            + (
                f" ({figure('estimated')} with window edges estimated: shot cuts are found only by decoding)"
                if summary["estimated"]
                else ""
            )
        )
    each = 1000 * summary["probe_seconds"] / max(1, summary["probed_files"])
    lines.append(
        f"planned in {summary['plan_seconds']:.1f} s ({summary['probed_files']:,} files probed, {each:.0f} ms each)"
    )
    return "\n".join(lines)


def _human_seconds(value: float) -> str:
    return f"{value / 3600:,.1f} h" if value >= 3600 else f"{value:,.1f} s"


def _human_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{value:,.0f} B"
        value /= 1000
    return f"{value:,.1f} PB"


def main_plan(args) -> int:
    """The ``plan`` command."""
    import json

    from vidcap.config import build_config

    config = build_config(args.configfile, args.config)
    summary = plan_build(
        config,
        exact=DEFAULT_EXACT if args.exact is None else args.exact,
        sample=args.sample or DEFAULT_SAMPLE,
    )
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_plan(summary, args.rate, args.tokens_per_second))
    return 0
