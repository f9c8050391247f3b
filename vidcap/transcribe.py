"""The transcript step (``audio.mode: transcript``): each record's speech as time-stamped segments.

Segment times come from the signal, not from the model: an energy gate over the 16 kHz samples
(:func:`speech_spans`) finds the spans that are louder than the track's quiet floor, cut to at most 30 s
(Whisper's window), and Whisper transcribes each span on its own. So every segment lies inside the clip
whatever the checkpoint does (a random-weight test model emits no meaningful timestamps), and the cost is
one 30 s encoder pass per span. The gate hears music and noise too: such spans go to Whisper like speech
(a real checkpoint mostly answers them with nothing or a tag such as "[Music]").

Results are kept per media file in the result store (vidcap.store), keyed by the ASR settings (the
model's identity, the language) and the file's identity (real path, size, mtime) as the frame cache is,
so a rebuild, a resharded dataset or an edited caption prompt transcribes nothing again. A shard's output
has one line per record, in shard order: ``{digest, transcript, language, note}``; ``transcript`` is the
first video's segments, or null with ``note`` saying why (``no audio``, ``audio undecodable: ...``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from vidcap import audio_track
from vidcap.atomic import atomic_open, dumps_line, iter_jsonl
from vidcap.provenance import canonical_hash
from vidcap.records import media_list, record_digest, resolve_media
from vidcap.result_keys import file_identity, model_weights
from vidcap.store import ResultStore

KEY_VERSION = 1
FRAME_SECONDS = 0.03  # the gate's analysis frame
GAP_SECONDS = 0.5  # quieter stretches shorter than this stay inside a span
MIN_SPAN_SECONDS = 0.2
MAX_SPAN_SECONDS = 30.0  # Whisper's input window
FLOOR_DB = -50.0  # quieter than this is silence, however quiet the track
ABOVE_FLOOR_DB = 20.0  # a frame this far above the track's quietest tenth is sound...
LOUD_DB = -35.0  # ...and so is any frame louder than this (a track without pauses: music, a steady voice)
MAX_TOKENS = 220  # text tokens per span: ~3x what 30 s of fast speech needs


def speech_spans(samples: np.ndarray, rate: int = audio_track.RATE) -> list[tuple[float, float]]:
    """(start, end) seconds of the loud stretches of ``samples``, each at most 30 s long."""
    hop = int(rate * FRAME_SECONDS)
    frames = len(samples) // hop
    if frames == 0:
        return []
    power = np.square(samples[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    level = 10 * np.log10(power + 1e-12)
    threshold = max(FLOOR_DB, min(LOUD_DB, float(np.percentile(level, 10)) + ABOVE_FLOOR_DB))
    loud = np.flatnonzero(level > threshold)
    spans, gap = [], int(GAP_SECONDS / FRAME_SECONDS)
    for index in loud.tolist():
        if spans and index - spans[-1][1] <= gap:
            spans[-1][1] = index + 1
        else:
            spans.append([index, index + 1])
    seconds = [(a * FRAME_SECONDS, min(b * FRAME_SECONDS, len(samples) / rate)) for a, b in spans]
    out = []
    for start, end in seconds:
        if end - start < MIN_SPAN_SECONDS:
            continue
        while end - start > MAX_SPAN_SECONDS:
            out.append((start, start + MAX_SPAN_SECONDS))
            start += MAX_SPAN_SECONDS
        out.append((start, end))
    return [(round(a, 2), round(b, 2)) for a, b in out]


def duration(path: str) -> float | None:
    """The container's duration (the audio track may run a codec frame past the video)."""
    from vidcap.probe import ffmpeg_url, ffprobe

    data, _, code = ffprobe(ffmpeg_url(path), time.monotonic() + 60, "duration probe", "-show_format")
    try:
        return float(data["format"]["duration"]) if code == 0 else None
    except (KeyError, TypeError, ValueError):
        return None


def inside(spans: list[tuple[float, float]], end: float | None) -> list[tuple[float, float]]:
    """The spans cut to the clip's end (spans past it dropped)."""
    if end is None:
        return spans
    return [(a, min(b, end)) for a, b in spans if min(b, end) - a >= MIN_SPAN_SECONDS]


def asr_identity(settings: dict) -> str:
    """What every transcript depends on besides its file: the model's weights and the language asked."""
    from vidcap.provenance import model_identity

    weights = model_weights(model_identity(settings["asr_model"]))
    return canonical_hash([KEY_VERSION, "asr", weights, settings.get("language")])


def file_key(identity: str, path: str) -> str:
    # the real file, as the frame cache names it: links and other spellings share a transcript
    return canonical_hash(["transcript", identity, file_identity(path)])[:32]


def first_video(record: dict, settings: dict) -> str | None:
    videos = media_list(record, settings["keys"]["video"])
    return resolve_media(videos[0], settings["media_root"]) if videos else None


def transcribe_shard(shard_path: str, result_path: str, settings: dict, log=sys.stderr, llm=None) -> dict:
    """Transcribe the first video of every record of a shard (stored results first); write one line per
    record. ``llm``: a Whisper engine to reuse (tests); by default one starts only if something is new."""
    started = time.monotonic()
    store = ResultStore(settings["store"])
    identity = asr_identity(settings)
    records = list(iter_jsonl(shard_path))
    paths = [first_video(record, settings) for record in records]
    keys = {path: file_key(identity, path) for path in paths if path}
    found = {path: store.get(key) for path, key in keys.items()}
    missing = [path for path, value in found.items() if value is None]
    stats = {"records": len(records), "files": len(keys), "stored": len(keys) - len(missing), "spans": 0}
    print(
        f"shard {Path(shard_path).stem}: {len(records)} records, {len(keys)} audio files, "
        f"{len(missing)} to transcribe",
        file=log,
        flush=True,
    )
    if missing:
        with contextlib.ExitStack() as stack:
            asr = WhisperAsr(settings, log, stack, stats, llm)
            for path in missing:
                found[path] = transcribe_file(path, asr, settings, stats)
                if found[path].pop("keep", True):
                    store.put(keys[path], found[path])
    with atomic_open(result_path) as handle:
        for record, path in zip(records, paths):
            value = found.get(path) or {"segments": None, "language": None, "note": None}
            line = {"digest": record_digest(record), "transcript": value["segments"]}
            handle.write(dumps_line({**line, "language": value["language"], "note": value["note"]}))
    stats["seconds"] = round(time.monotonic() - started, 3)
    print(f"shard {Path(shard_path).stem}: {stats}", file=log, flush=True)
    return stats


def transcribe_file(path: str, asr, settings: dict, stats: dict) -> dict:
    """A file's segments and language, or its note (an undecodable track is not kept: it may pass later)."""
    try:
        samples = audio_track.decode(path)
    except audio_track.NoAudio as exc:
        return {"segments": None, "language": None, "note": exc.note}
    except audio_track.AudioUndecodable as exc:
        return {"segments": None, "language": None, "note": f"{exc.note}: {exc}", "keep": False}
    spans = inside(speech_spans(samples), duration(path))
    stats["spans"] += len(spans)
    if not spans:
        return {"segments": [], "language": settings.get("language"), "note": "no speech"}
    rate = audio_track.RATE
    pieces = [samples[int(a * rate) : int(b * rate)] for a, b in spans]
    language = settings.get("language") or asr.detect_language(max(pieces, key=len))
    texts = asr.transcribe(pieces, language)
    segments = [{"start": a, "end": b, "text": text} for (a, b), text in zip(spans, texts)]
    return {"segments": segments, "language": language, "note": None}


class WhisperAsr:
    """vLLM's Whisper (encoder-decoder: the audio goes to the encoder, the task tokens to the decoder)."""

    def __init__(self, settings: dict, log, stack: contextlib.ExitStack, stats: dict, llm=None):
        self.settings, self.log, self.stack, self.stats, self._llm = settings, log, stack, stats, llm

    @property
    def llm(self):
        """The engine, started on first use: a shard whose new files have no audio starts none."""
        if self._llm is None:
            from vidcap.engine import stop_engine
            from vidcap.gpus import device_slots

            # a GPU slot of this node, locked as caption jobs lock theirs (vidcap.gpus)
            timeout = self.settings["engine"]["gpu_wait_timeout"]
            self.stats["devices"] = self.stack.enter_context(device_slots(1, timeout=timeout, log=self.log))
            self._llm = start_whisper(self.settings, self.log)
            self.stack.callback(stop_engine, self._llm, self.log)  # before the slot is freed (LIFO)
        return self._llm

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def _prompt(self, samples: np.ndarray, decoder: str) -> dict:
        audio = {"audio": (samples, audio_track.RATE)}
        return {"encoder_prompt": {"prompt": "", "multi_modal_data": audio}, "decoder_prompt": decoder}

    def detect_language(self, samples: np.ndarray) -> str:
        """Whisper's own way: the one token after start-of-transcript, among the language tokens."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES
        from vllm import SamplingParams

        codes = {self.tokenizer.convert_tokens_to_ids(f"<|{code}|>"): code for code in LANGUAGES}
        codes.pop(self.tokenizer.unk_token_id, None)
        params = SamplingParams(temperature=0, max_tokens=1, allowed_token_ids=sorted(codes))
        out = self.llm.generate([self._prompt(samples, "<|startoftranscript|>")], params, use_tqdm=False)
        return codes[out[0].outputs[0].token_ids[0]]

    def transcribe(self, pieces: list[np.ndarray], language: str) -> list[str]:
        from vllm import SamplingParams

        decoder = f"<|startoftranscript|><|{language}|><|transcribe|><|notimestamps|>"
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, skip_special_tokens=True)
        outs = self.llm.generate([self._prompt(p, decoder) for p in pieces], params, use_tqdm=False)
        return [" ".join(o.outputs[0].text.split()) for o in outs]


def whisper_engine(settings: dict) -> tuple[dict, int]:
    """The caption engine's section sized for Whisper: its decoder context (448 tokens), room for one
    30 s encoder input per step, and none of the caption model's vllm_args."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(settings["asr_model"])
    engine = dict(settings["engine"], vllm_args={}, max_num_seqs=None, tensor_parallel_size=1)
    engine["max_model_len"] = int(config.max_target_positions)
    engine["max_num_batched_tokens"] = max(int(config.max_source_positions), engine["max_model_len"])
    return engine, int(config.max_source_positions)


def start_whisper(settings: dict, log):
    from vidcap.engine import start_engine

    engine, _ = whisper_engine(settings)
    t0 = time.monotonic()
    llm = start_engine(settings["asr_model"], engine, {"audio": 1}, 0)
    print(
        f"whisper engine up in {time.monotonic() - t0:.1f} s ({settings['asr_model']})", file=log, flush=True
    )
    return llm
