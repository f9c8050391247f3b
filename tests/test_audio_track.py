"""Audio decoding on real ffmpeg media: a tone's samples at 16 kHz mono for exactly the span asked; a
video without audio is NoAudio; a corrupt audio stream is AudioUndecodable (notes, not record errors)."""

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from vidcap import audio_track


def make(path, audio: bool = True, seconds: float = 2.0, audio_codec: str = "aac") -> str:
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size=64x48:rate=10:duration={seconds}",
    ]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p"] + (["-c:a", audio_codec] if audio else []) + [str(path)]
    subprocess.run(cmd, check=True)
    return str(path)


def test_a_tone_decodes_to_16k_mono_for_the_span(tmp_path):
    clip = make(tmp_path / "tone.mp4")
    samples = audio_track.decode(clip, 0.5, 1.5)
    assert samples.dtype == np.float32
    assert abs(len(samples) - audio_track.RATE) <= 160  # 1 s, within one 10 ms frame of the codec
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * audio_track.RATE / len(samples)
    assert abs(peak_hz - 440) < 5
    assert len(audio_track.decode(clip)) == pytest.approx(2 * audio_track.RATE, abs=1200)


def test_no_audio_stream_is_noaudio(tmp_path):
    clip = make(tmp_path / "silent.mp4", audio=False)
    assert not audio_track.has_audio(clip, time.monotonic() + 30)
    with pytest.raises(audio_track.NoAudio):
        audio_track.decode(clip)


def test_a_corrupt_audio_stream_is_undecodable(tmp_path):
    clip = Path(make(tmp_path / "broken.mkv", seconds=1.0, audio_codec="flac"))
    data = bytearray(clip.read_bytes())
    flac = data.find(b"fLaC")
    start = flac if flac > 0 else len(data) // 2
    data[start : start + 4000] = bytes(4000)  # zero the codec header and first audio packets
    clip.write_bytes(bytes(data))
    with pytest.raises(audio_track.AudioUndecodable) as caught:
        audio_track.decode(str(clip))
    assert caught.value.note == "audio undecodable"
