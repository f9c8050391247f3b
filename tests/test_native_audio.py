"""``audio.mode: native`` on real media: the frames step caches each video's audio for the span its frames
cover (each window its own slice), notes a missing or undecodable track, leaves a mode-off build as it was;
with the tiny random-weight Qwen2.5-Omni (its captions are gibberish) the real vLLM CPU build captions clips
with their sound, and its prompt tokens equal vidcap's plan including the audio tokens."""

import gc
import json
import subprocess

import numpy as np
import pytest
from helpers import CAPTIONED, build_tiny_model, write_records

from vidcap import audio_tokens, audio_track, native_audio
from vidcap import config as vconfig
from vidcap.budget import geometry_for
from vidcap.frames import extract_frames
from vidcap.result_keys import record_key, window_key

FRAMES = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 56 * 56, "max_pixels": 56 * 84}
FRAMES |= {"max_vision_tokens": 2000, "patch_factor": 28}


def make_clip(path, seconds: float = 2.0, audio: str | None = "sine", speech: str | None = None) -> str:
    """A testsrc clip muxed with a lavfi tone/noise, espeak-ng speech, or no audio (argument lists only)."""
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=84x56:rate=8:duration={seconds}",
    ]
    if speech is not None:
        wav = str(path) + ".wav"
        subprocess.run(["espeak-ng", "-w", wav, speech], check=True, capture_output=True)
        cmd += ["-i", wav, "-af", "apad", "-t", str(seconds)]
    elif audio == "sine":
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    elif audio == "noise":
        cmd += ["-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.3:duration={seconds}"]
    audio_codec = ["-c:a", "aac"] if (speech is not None or audio) else []
    subprocess.run(
        [*cmd, "-c:v", "libx264", "-pix_fmt", "yuv420p", *audio_codec, "-shortest", str(path)], check=True
    )
    return str(path)


def frames_settings(tmp_path, native: bool = True, long_video=None) -> dict:
    settings = {
        "keys": {},
        "frames": FRAMES,
        "cache_dir": str(tmp_path / "cache"),
        "media_root": str(tmp_path),
    }
    if long_video:
        settings["long_video"] = long_video
    return {**settings, "audio": {"mode": "native"}} if native else settings


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "speech": make_clip(folder / "speech.mp4", 3.0, speech="the dog runs in the kitchen"),
        "tone": make_clip(folder / "tone.mp4", 2.0, "sine"),
        "noise": make_clip(folder / "noise.mp4", 2.0, "noise"),
        "silent": make_clip(folder / "silent.mp4", 2.0, None),
    }


# ------------------------------------------------------------------------------------------------ fast
def test_audio_tokens_are_25_per_second_after_pooling():
    assert audio_tokens.audio_tokens(16_000) == 25
    assert audio_tokens.audio_tokens(60 * 16_000, 300) == 1500  # a minute: 1500 tokens
    assert audio_tokens.audio_tokens(60 * 16_000, 30) == 750  # a 30 s feature extractor cuts it
    assert audio_tokens.audio_tokens(160) == 0  # too short to be represented: a note, never a request
    assert audio_tokens.audio_tokens(native_audio.MIN_SAMPLES - 1) == 0
    assert audio_tokens.audio_tokens(native_audio.MIN_SAMPLES) == 1


def test_frames_step_caches_the_audio_of_the_sampled_span(clips, tmp_path):
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clips["tone"]]}, {"video": [clips["silent"]]}])
    extract_frames(str(shard), str(tmp_path / "m.json"), frames_settings(tmp_path))
    tone, silent = (e["videos"][0] for e in json.loads((tmp_path / "m.json").read_text())["records"])
    audio = tone["audio"]
    start, end = native_audio.frame_span(tone["meta"])
    assert (audio["start"], audio["end"]) == (round(start, 6), round(end, 6))
    assert 0 <= start < end <= tone["meta"]["duration"]
    samples = native_audio.load(audio)
    assert samples.dtype == np.float32 and len(samples) == audio["samples"]
    assert abs(len(samples) - (end - start) * audio_track.RATE) <= 1200  # within the codec's frame
    assert audio["file"].endswith(".audio.npy") and tone["frames"].rsplit("/", 1)[0] in audio["file"]
    peak = np.argmax(np.abs(np.fft.rfft(samples))) * audio_track.RATE / len(samples)
    assert abs(peak - 440) < 5
    assert silent["audio"] == {"note": "no audio"}
    assert native_audio.note({"videos": [silent]}) == "no audio"
    assert native_audio.note({"videos": [tone]}) is None


def test_mode_off_writes_what_it_wrote_before(clips, tmp_path):
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clips["tone"]]}])
    extract_frames(str(shard), str(tmp_path / "off.json"), frames_settings(tmp_path, native=False))
    extract_frames(str(shard), str(tmp_path / "on.json"), frames_settings(tmp_path))
    off = json.loads((tmp_path / "off.json").read_text())["records"][0]
    on = json.loads((tmp_path / "on.json").read_text())["records"][0]
    assert "audio" not in off["videos"][0] and not list((tmp_path / "cache").rglob("*.audio.npy.off"))
    assert on["videos"][0]["frames"] == off["videos"][0]["frames"]  # the same frame-cache key
    on_audio = on["videos"][0].pop("audio")
    assert on["videos"][0] | {"cached": None} == off["videos"][0] | {"cached": None}
    with_audio = {**on, "videos": [{**on["videos"][0], "audio": on_audio}]}
    assert record_key("id", "p", off) != record_key("id", "p", with_audio)  # the audio is in the result key


def test_undecodable_audio_is_a_note(tmp_path):
    clip = tmp_path / "broken.mkv"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=84x56:rate=8:duration=2"]
    cmd += ["-f", "lavfi", "-i", "sine=duration=2", "-c:v", "libx264", "-c:a", "flac", str(clip)]
    subprocess.run(cmd, check=True)
    data = bytearray(clip.read_bytes())
    flac = data.find(b"fLaC")
    data[flac : flac + 42] = bytes(42)  # FLAC's stream header zeroed: the video still reads
    clip.write_bytes(bytes(data))
    shard = write_records(tmp_path / "s.jsonl", [{"video": [str(clip)]}])
    extract_frames(str(shard), str(tmp_path / "m.json"), frames_settings(tmp_path))
    entry = json.loads((tmp_path / "m.json").read_text())["records"][0]
    assert entry["error"] is None  # a note, not the record's error
    assert entry["videos"][0]["audio"]["note"].startswith("audio undecodable")
    assert native_audio.note(entry).startswith("audio undecodable")


def test_each_window_gets_its_own_audio_slice(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", 12.0, "sine")
    windows = {"mode": "windows", "window_frames": 8, "min_window_frames": 4, "shots": False}
    frames = FRAMES | {"fps": 2.0, "max_frames": 64}
    settings = frames_settings(tmp_path, long_video=windows) | {"frames": frames}
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clip]}])
    extract_frames(str(shard), str(tmp_path / "m.json"), settings)
    video = json.loads((tmp_path / "m.json").read_text())["records"][0]["videos"][0]
    assert len(video["windows"]) == 3, video.get("windows")
    keys = set()
    for window in video["windows"]:
        audio = window["audio"]
        assert (audio["start"], audio["end"]) == (window["start"], window["end"])
        assert abs(audio["samples"] - (window["end"] - window["start"]) * audio_track.RATE) <= 1200
        keys.add(audio["key"])
        sub = {"frames": window["frames"], "audio": audio}
        assert window_key("id", "p", sub) != window_key("id", "p", {"frames": window["frames"]})
    assert len(keys) == 3


def test_a_request_carries_the_audio_and_the_frames_sampling_rate(clips, tmp_path):
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clips["speech"]]}, {"video": [clips["silent"]]}])
    extract_frames(str(shard), str(tmp_path / "m.json"), frames_settings(tmp_path))
    speech, silent = json.loads((tmp_path / "m.json").read_text())["records"]
    data, uuids, kwargs = native_audio.request_parts(speech)
    samples, rate = data["audio"]
    assert rate == audio_track.RATE and len(samples) == speech["videos"][0]["audio"]["samples"]
    assert uuids == {"audio": [speech["videos"][0]["audio"]["key"]]}
    # Qwen2.5-Omni's processor assumes 2 fps unless told: 6 frames of a 3 s clip (8 fps source) are 2 fps,
    # and with half of them kept (halving) 1 fps
    assert kwargs == {"use_audio_in_video": True, "fps": pytest.approx(2.0)}
    assert native_audio.request_parts(speech, [[0, 2, 4]])[2]["fps"] == pytest.approx(1.0)
    assert native_audio.request_parts(silent) == ({}, {}, {})


def test_a_model_without_an_audio_encoder_is_refused():
    from transformers import Qwen2_5OmniConfig, Qwen2VLConfig

    with pytest.raises(ValueError, match="audio.mode native needs an audio-visual model"):
        audio_tokens.check_model("Qwen/Qwen2-VL-2B-Instruct", Qwen2VLConfig())
    audio_tokens.check_model("Qwen/Qwen2.5-Omni-7B", Qwen2_5OmniConfig(enable_audio_output=False))


def test_cache_prune_keeps_the_audio_a_manifest_names(clips, tmp_path):
    from vidcap import prune

    results = tmp_path / "results"
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clips["tone"]]}])
    settings = frames_settings(tmp_path) | {"cache_dir": str(results / "frames" / "cache")}
    extract_frames(str(shard), str(results / "frames" / "0000.json"), settings)
    audio = [p for p in (results / "frames" / "cache").rglob("*.audio.*")]
    assert len(audio) == 2  # the samples and their content record
    stray = audio[0].parent / "0123.audio.npy"
    stray.write_bytes(b"x")
    plan = prune.plan_prune(results, 1, min_age=0)
    assert plan.remove["frames"] == [stray]


def test_audio_mode_reaches_caption_params_only_when_not_off():
    from vidcap import settings as vsettings

    config = vconfig.defaults()
    config["input"] = "records.json"
    off = vsettings.caption_params(config)
    assert "audio" not in off
    for mode in (False, "off"):
        config["audio"]["mode"] = mode
        assert vsettings.caption_params(config) == off
        assert "audio" not in vsettings.frames_settings(config, "0")
    config["audio"]["mode"] = "native"
    assert vsettings.caption_params(config)["audio"] == {"mode": "native"}
    assert vsettings.frames_settings(config, "0")["audio"] == {"mode": "native"}


def test_plan_counts_25_audio_tokens_a_second(clips, tmp_path):
    import yaml

    from vidcap.config import build_config
    from vidcap.plan import format_plan, plan_build

    write_records(tmp_path / "records.jsonl", [{"video": [clips["tone"]]}, {"video": [clips["speech"]]}])
    config = {
        "input": str(tmp_path / "records.jsonl"),
        "results": str(tmp_path / "results"),
        "frames": FRAMES,
    }
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config | {"audio": {"mode": "native"}}))
    summary = plan_build(build_config([str(tmp_path / "my.yaml")], []), progress=False)
    # 2 s and 3 s of sound: 50 + 75 tokens, and <|audio_bos|> <|audio_eos|> around each
    assert summary["audio_tokens"] == pytest.approx(50 + 75 + 4, abs=2)
    assert "audio tokens:" in format_plan(summary)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    off = plan_build(build_config([str(tmp_path / "my.yaml")], []), progress=False)
    assert off["audio_tokens"] == 0 and "audio tokens" not in format_plan(off)
    assert summary["prompt_tokens"] - off["prompt_tokens"] == summary["audio_tokens"]


def test_tiny_model_7b_has_the_published_thinker(tmp_path):
    """``--size 7b`` (config only): Qwen2.5-Omni-7B's thinker, 8.93 B parameters counted on the meta device."""
    import torch
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from vidcap.tiny_model import build_tiny_model

    out = build_tiny_model(tmp_path / "omni7b", "qwen2_5_omni", "7b", config_only=True)
    config = Qwen2_5OmniConfig.from_pretrained(out)
    assert config.enable_audio_output is False
    assert config.thinker_config.text_config.hidden_size == 3584
    assert config.thinker_config.audio_config.d_model == 1280
    assert audio_tokens.chunk_seconds_of(str(out)) == 300
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(8.93, abs=0.01)


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_tiny_omni_captions_with_audio_and_counts_its_tokens(clips, tiny_omni, tmp_path):
    """Captions (gibberish: random weights) for speech, tone, noise and silent clips; every prompt's tokens,
    as vLLM counts them, equal the text's plus the planned vision tokens plus the audio tokens."""
    from transformers import AutoProcessor

    from vidcap.caption import caption_shard
    from vidcap.config import defaults
    from vidcap.engine import start_engine
    from vidcap.prompts import chat_template, vision_tokens
    from vidcap.windows import clip_phrase

    model = str(tiny_omni)
    names = ["speech", "tone", "noise", "silent"]
    shard = write_records(tmp_path / "s.jsonl", [{"video": [clips[n]]} for n in names])
    extract_frames(str(shard), str(tmp_path / "m.json"), frames_settings(tmp_path))
    entries = json.loads((tmp_path / "m.json").read_text())["records"]

    # the processor's own count of audio tokens for each cached span
    processor = AutoProcessor.from_pretrained(model)
    audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    chunk = audio_tokens.chunk_seconds_of(model)
    for entry in entries[:3]:
        audio = entry["videos"][0]["audio"]
        ids = processor(text=processor.audio_token, audio=[native_audio.load(audio)])["input_ids"][0]
        assert sum(1 for i in ids if i == audio_id) == audio_tokens.audio_tokens(audio["samples"], chunk)

    engine = defaults("engine") | {"max_model_len": 4096, "dtype": "bfloat16", "enforce_eager": True}
    engine |= {"cpu_kvcache_space_gb": 1}
    llm = start_engine(model, engine, {"video": 1, "image": 0, "audio": 1}, 0)
    job = {
        "model": model,
        "prompt": "Describe what you see and hear.",
        "system_prompt": "",
        "keys": {},
        "engine": engine,
        "frames": FRAMES,
        "sampling": {"temperature": 0.0, "max_tokens": 4, "seed": 0},
        "audio": {"mode": "native"},
    }
    caption_shard(str(shard), str(tmp_path / "m.json"), str(tmp_path / "out.jsonl"), job, llm=llm)
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    tokenizer = llm.get_tokenizer()
    text = chat_template(model, tokenizer)("", 0, 1, job["prompt"])
    text_tokens = len(tokenizer.encode(text, add_special_tokens=False)) - 1  # less the video placeholder
    geometry = geometry_for(model, llm.llm_engine.model_config.hf_config)
    for name, entry, result in zip(names, entries, results):
        meta = result["caption_meta"]
        assert meta["status"] in CAPTIONED, (name, meta)
        assert isinstance(result["caption"], str)  # gibberish from random weights
        heard = audio_tokens.request_tokens(entry, chunk)
        planned = text_tokens + vision_tokens(entry, None, geometry) + heard
        assert meta["prompt_tokens"] == planned, (name, meta["prompt_tokens"], planned)
        if name == "silent":
            assert meta["audio"] == "no audio" and heard == 0
        else:
            seconds = entry["videos"][0]["audio"]["samples"] / audio_track.RATE
            assert heard == audio_tokens.audio_tokens(entry["videos"][0]["audio"]["samples"], chunk) + 2
            assert abs(heard - 2 - 25 * seconds) <= 1  # 25 tokens a second
            assert "audio" not in meta

    # a long clip in windows: each window's request hears its own slice of the sound
    long_clip = make_clip(tmp_path / "long.mp4", 12.0, "noise")
    windows = {"mode": "windows", "window_frames": 8, "min_window_frames": 4, "shots": False}
    shard = write_records(tmp_path / "w.jsonl", [{"video": [long_clip]}])
    settings = frames_settings(tmp_path, long_video=windows) | {"frames": FRAMES | {"max_frames": 64}}
    extract_frames(str(shard), str(tmp_path / "wm.json"), settings)
    video = json.loads((tmp_path / "wm.json").read_text())["records"][0]["videos"][0]
    caption_shard(str(shard), str(tmp_path / "wm.json"), str(tmp_path / "w.jsonl.out"), job, llm=llm)
    result = json.loads((tmp_path / "w.jsonl.out").read_text())
    assert len(video["windows"]) == len(result["caption_meta"]["windows"]) == 3
    for window, done in zip(video["windows"], result["caption_meta"]["windows"]):
        assert done["status"] in CAPTIONED, done
        text = chat_template(model, tokenizer)(
            "", 0, 1, f"{clip_phrase(window['start'], window['end'])} {job['prompt']}"
        )
        sub = {"videos": [window], "images": []}
        heard = audio_tokens.request_tokens(sub, chunk)
        assert heard == audio_tokens.audio_tokens(window["audio"]["samples"], chunk) + 2 > 90  # 4 s: 100 + 2
        planned = (
            len(tokenizer.encode(text, add_special_tokens=False)) - 1 + vision_tokens(sub, None, geometry)
        )
        assert done["prompt_tokens"] == planned + heard, (done["prompt_tokens"], planned, heard)
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def tiny_omni(tmp_path_factory):
    """A tiny random-weight Qwen2.5-Omni thinker checkpoint (gibberish captions), built once."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-omni"), "qwen2_5_omni")
