"""What a request's audio costs in prompt tokens under ``audio.mode: native``, counted as Qwen2.5-Omni's
processor does, and whether the model can hear at all (caption side; the frames step's part is
:mod:`vidcap.native_audio`)."""

from __future__ import annotations

import math

from vidcap import audio_track
from vidcap.native_audio import heard

HOP = 160  # Whisper's feature extractor: samples per mel frame (10 ms at 16 kHz)
DEFAULT_CHUNK_SECONDS = 30  # WhisperFeatureExtractor's default chunk_length, if the model's is unknown
MARKERS = 2  # <|audio_bos|> and <|audio_eos|> around a video's interleaved audio


def audio_tokens(samples: int, chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
    """Audio tokens of ``samples`` 16 kHz samples, as Qwen2.5-Omni's processor counts them: mel frames
    (one per 160 samples, cut at ``chunk_seconds``), halved by the encoder's stride-2 convolution, then by
    its 2x average pooling."""
    frames = math.ceil(min(samples, int(chunk_seconds * audio_track.RATE)) / HOP)
    if frames <= 0:
        return 0
    after_conv = (frames - 1) // 2 + 1
    return max(0, (after_conv - 2) // 2 + 1)


def check_model(model: str, hf_config) -> None:
    """Refuse a model that cannot hear (no audio encoder in its config) before any request is sent."""
    thinker = getattr(hf_config, "thinker_config", None)
    if hf_config is not None and getattr(thinker, "audio_config", None) is None:
        kind = getattr(hf_config, "model_type", "?")
        raise ValueError(
            f"audio.mode native needs an audio-visual model (a Qwen2.5-Omni thinker); {model} is {kind}: "
            "use audio.mode transcript for it (docs/audio-native.md)"
        )


def chunk_seconds_of(model: str) -> float:
    """Seconds of audio the model's feature extractor reads per item (its processor's ``chunk_length``)."""
    try:
        from transformers import AutoFeatureExtractor

        return float(AutoFeatureExtractor.from_pretrained(model).chunk_length)
    except Exception:  # noqa: BLE001 -- no local processor: Whisper's default
        return DEFAULT_CHUNK_SECONDS


def request_tokens(entry: dict, chunk_seconds: float) -> int:
    """Prompt tokens the audio adds to a request (0 when none is sent)."""
    audios = heard(entry)
    if audios is None:
        return 0
    return sum(audio_tokens(a["samples"], chunk_seconds) + MARKERS for a in audios)
