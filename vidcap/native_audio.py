"""``audio.mode: native``: an audio-visual model (the Qwen2.5-Omni thinker) hears each video's own audio.

The frames step decodes the audio of exactly the span its frames cover (vidcap.audio_track: 16 kHz mono
float32) and caches it beside the frames, under a key made of the frame-cache key and the span, so the
manifest's video item (or each window of a windowed one) gets ``"audio": {"file", "key", "start", "end",
"samples", "content"}``. A video without an audio track gets ``{"note": "no audio"}``, one ffmpeg cannot
decode ``{"note": "audio undecodable: ..."}``: the record is captioned from its frames and the note goes into
``caption_meta.audio``. The caption request then sends the samples with the video and
``use_audio_in_video``: vLLM interleaves them with the video in 2-second chunks.

Tokens (what the budget counts, exactly as Qwen2.5-Omni's processor and vLLM do): Whisper's feature
extractor makes one mel frame per 160 samples (10 ms), up to ``chunk_length`` seconds (300 for
Qwen2.5-Omni); the audio encoder's convolution halves them and its pooling halves them again, so one
second of audio is 25 tokens, plus ``<|audio_bos|>`` and ``<|audio_eos|>`` around the interleaved chunks.

With any other mode nothing here runs: manifests, frame-cache keys and result keys are as without it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vidcap import audio_track, frame_store
from vidcap.atomic import atomic_open
from vidcap.config import audio_mode

NATIVE = "native"
AUDIO_VERSION = 1  # bump when the cached samples for the same span would change
MIN_SAMPLES = 321  # fewer make no audio token (vidcap.audio_tokens.audio_tokens: 3 mel frames)


def is_native(settings: dict) -> bool:
    """Whether a config, or a frames or caption job's settings (their ``audio`` part), says native."""
    return audio_mode(settings) == NATIVE


# ------------------------------------------------------------------------------------------- frames step
def frame_span(meta: dict) -> tuple[float, float]:
    """The seconds one video item's (or window's) frames cover: a window's own span; else from the first
    sampled frame to the last plus one sampling step (the time the last frame stands for), within the video."""
    if "window_start" in meta:
        start = float(meta["window_start"])
        return start, start + float(meta["duration"])
    stamps = [float(t) for t in meta.get("timestamps") or [0.0]]
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float(meta["duration"])
    return stamps[0], min(float(meta["duration"]), stamps[-1] + step)


def audio_key(frames_file: str, start: float, end: float) -> str:
    """The audio cache key: the frame-cache key (file identity and frame parameters) and the span."""
    text = json.dumps(
        [AUDIO_VERSION, Path(frames_file).stem, round(start, 6), round(end, 6), audio_track.RATE]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def cached_audio(source: str, frames_file: str, start: float, end: float) -> dict:
    """The audio of ``source`` from ``start`` to ``end`` s, from the cache beside ``frames_file`` (decoded
    first if missing); a note instead when the file has no audio or it cannot be decoded."""
    key = audio_key(frames_file, start, end)
    path = Path(frames_file).parent / f"{key}.audio.npy"
    record = {"file": str(path), "key": key, "start": round(start, 6), "end": round(end, 6)}
    sidecar = path.with_suffix(".json")
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
        if frame_store.is_intact(path, content):
            return {**record, "samples": int(content["shape"][0]), "content": content}
    except (OSError, ValueError, KeyError):
        pass
    try:
        samples = audio_track.decode(source, start, end)
    except audio_track.AudioProblem as exc:
        return {"note": exc.note if isinstance(exc, audio_track.NoAudio) else f"{exc.note}: {exc}"}
    if len(samples) < MIN_SAMPLES:
        return {"note": f"no audio from {start:.2f} s to {end:.2f} s"}
    with atomic_open(path, "wb", durable=False) as handle:
        np.save(handle, samples.astype("<f4", copy=False))
    content = frame_store.content_record(path, "npy", samples.shape)
    with atomic_open(sidecar, "w", durable=False) as handle:
        handle.write(json.dumps(content))
    return {**record, "samples": len(samples), "content": content}


def attach(item: dict, source: str) -> dict:
    """A video's manifest item with its audio: the item's, or each window's (``source``: the file to decode)."""
    if "error" in item:
        return item
    if "windows" in item:
        for window in item["windows"]:
            if "frames" in window:
                window["audio"] = cached_audio(source, window["frames"], *frame_span(window["meta"]))
    elif "frames" in item:
        item["audio"] = cached_audio(source, item["frames"], *frame_span(item["meta"]))
    return item


def attach_all(entries: list[dict], sources: dict[str, str]) -> None:
    """Every video of a shard's manifest entries (``sources``: {manifest path: local file})."""
    done: dict[int, dict] = {}
    for entry in entries:
        for video in entry["videos"]:
            if video is not None and id(video) not in done:  # items shared by records are done once
                done[id(video)] = attach(video, sources.get(video["path"], video["path"]))


# ------------------------------------------------------------------------------------------- requests
def heard(entry: dict) -> list[dict] | None:
    """The audio records of every video of a request's entry, or None: audio goes with the videos only when
    each of them has some (vLLM's use_audio_in_video pairs one audio with every video)."""
    audios = [(v or {}).get("audio") or {} for v in entry["videos"]]
    if not audios or not all("file" in a for a in audios):
        return None
    return audios


def load(audio: dict) -> np.ndarray:
    return np.array(np.load(audio["file"], mmap_mode="r"), dtype=np.float32)


def request_parts(entry: dict, keep: list | None = None) -> tuple[dict, dict, dict]:
    """(multi_modal_data, multi_modal_uuids, mm_processor_kwargs) additions for one request: nothing when
    no audio goes with it. ``keep``: the frames kept per video (halving), for the sampling rate."""
    audios = heard(entry)
    if audios is None:
        return {}, {}, {}
    data = [(load(a), audio_track.RATE) for a in audios]
    return (
        {"audio": data[0] if len(data) == 1 else data},
        {"audio": [a["key"] for a in audios]},
        # Qwen2.5-Omni's processor places video tokens in time from this rate (2 fps unless told; it does
        # not read the video's metadata), and interleaves the audio with them by those times
        {"use_audio_in_video": True, "fps": sampling_rate(entry["videos"][0], (keep or [None])[0])},
    )


def sampling_rate(video: dict, keep: list | None = None) -> float:
    """Frames per second the request's frames were taken at (as vidcap.prompts.video_item describes them)."""
    meta = video["meta"]
    sent = len(meta["frames_indices"]) if keep is None else len(keep)
    return sent / max(int(meta["total_num_frames"]), 1) * float(meta["fps"])


def note(entry: dict) -> str | None:
    """What ``caption_meta.audio`` says when a request's videos are captioned without their sound."""
    notes = []
    for video in entry["videos"]:
        items = (video or {}).get("windows") or [video or {}]
        notes += [w["audio"]["note"] for w in items if "note" in (w.get("audio") or {})]
    if notes:
        return notes[0]
    if entry["videos"] and heard(entry) is None and not any("windows" in (v or {}) for v in entry["videos"]):
        return "no audio"
    return None


def key_part(item: dict) -> str | None:
    """What an item's audio adds to its result key: the audio cache key, or its note (None: no audio part)."""
    audio = item.get("audio")
    if not audio:
        return None
    return audio.get("key") or audio.get("note")


def ensure(entry: dict) -> None:
    """Audio for a caption job's entry whose frames were extracted again, or whose audio file is gone."""
    for video in entry["videos"]:
        if not video or "error" in video:
            continue
        items = video.get("windows") or [video]
        if any("frames" in w and not _intact(w.get("audio")) for w in items):
            attach(video, video["path"])


def _intact(audio: dict | None) -> bool:
    if not audio:
        return False
    return "note" in audio or frame_store.is_intact(audio["file"], audio.get("content"))
