"""audio.mode transcript: Whisper segments the caption prompt hears, and the workflow around them.

The slow test runs the real workflow on the CPU build of vLLM with two tiny random-weight models built
here (Qwen2-VL captions, Whisper transcripts): the captions AND the transcripts are gibberish by design
(their text is never checked, only structure, times, notes, caching and bytes). The speech is real,
synthesised with espeak-ng and muxed under a lavfi video; the music is two ffmpeg sine tones.
"""

import json
import shutil

import numpy as np
import pytest
from helpers import (
    CAPTIONED,
    build_tiny_model,
    jobs_run,
    make_music_clip,
    make_speech_clip,
    make_video,
    run_snakemake,
    tiny_config,
    write_records,
)

from vidcap import settings, transcribe
from vidcap.config import with_defaults
from vidcap.transcript_prompt import Transcripts

RATE = 16_000


def tone(seconds: float, db: float = -12.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_spans_follow_the_loud_stretches_and_merge_short_pauses():
    silence = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    samples = np.concatenate([silence(1), tone(2), silence(0.3), tone(1), silence(2), tone(1), silence(1)])
    spans = transcribe.speech_spans(samples)
    assert len(spans) == 2  # the 0.3 s pause is inside the first span, the 2 s one splits
    (a0, b0), (a1, b1) = spans
    assert a0 == pytest.approx(1.0, abs=0.05) and b0 == pytest.approx(4.3, abs=0.05)
    assert a1 == pytest.approx(6.3, abs=0.05) and b1 == pytest.approx(7.3, abs=0.05)


def test_a_steady_track_is_one_span_cut_to_30_seconds_and_silence_is_none():
    spans = transcribe.speech_spans(tone(70))
    assert [b - a for a, b in spans] == pytest.approx([30, 30, 10], abs=0.05)
    assert transcribe.speech_spans(np.zeros(RATE * 5, np.float32)) == []
    assert transcribe.speech_spans(tone(5, db=-70)) == []  # below the floor: silence
    assert transcribe.inside([(0.0, 2.01), (2.0, 2.3)], 2.0) == [(0.0, 2.0)]


def test_audio_off_leaves_the_caption_params_and_job_as_they_were():
    base = {**with_defaults(None, {"input": "in.json", "model": "m"})}
    off = {**base, "audio": {"mode": False, "transcript_tokens": 9}}
    assert settings.caption_params(off) == settings.caption_params(base)
    assert "transcripts" not in settings.caption_job(off, "000")
    on = {**base, "audio": {"mode": "transcript", "transcript_tokens": 9}}
    assert settings.caption_params(on)["audio"] == {"mode": "transcript", "transcript_tokens": 9}
    assert settings.caption_job(on, "000")["transcripts"].endswith("/transcripts/000.jsonl")
    # the transcribe rule's params hold no caption setting: an edited prompt transcribes nothing again
    edited = {**on, "prompt": "something else", "model": "other", "sampling": {}}
    assert settings.asr_params(edited) == settings.asr_params(on)


def test_the_transcript_fits_the_token_budget_and_a_cut_is_said(tmp_path, tiny_whisper):
    segments = [
        {"start": float(i), "end": i + 0.9, "text": "the dog is walking in the street"} for i in range(40)
    ]
    path = write_records(tmp_path / "t.jsonl", [{"digest": "d", "transcript": segments, "note": None}])
    whole = Transcripts(str(path), str(tiny_whisper), 100_000)
    prompt = whole.prompt(0, "d", "Describe.")
    assert prompt.startswith("Describe.\n\nSpeech heard") and "[39.0-39.9] the dog" in prompt
    cut = Transcripts(str(path), str(tiny_whisper), 120)
    text = cut.prompt(0, "d", "Describe.")
    block = text.split("\n\n", 1)[1]
    assert cut.tokens(block) <= 120 and "later segments left out" in block
    result = {"caption_meta": {}}
    cut.annotate(0, result)
    assert result["transcript"] == segments and result["caption_meta"]["audio"].startswith(
        "transcript cut to"
    )
    with pytest.raises(RuntimeError, match="stale"):
        cut.prompt(0, "other digest", "Describe.")


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A tiny random-weight Whisper (gibberish transcripts), built by the CLI."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-whisper"), "whisper")


@pytest.mark.slow
def test_transcript_mode_captions_every_clip_and_an_edited_prompt_reruns_captions_only(
    tiny_model, tiny_whisper, tmp_path
):
    """Speech, music and a clip without audio in one shard: all captioned (gibberish), the clips with audio
    have segments inside their duration, the silent one says "no audio"; the prompt edit reruns the caption
    job only (no frames, no ASR), and the original prompt again gives the first build's bytes."""
    media = tmp_path / "media"
    media.mkdir()
    make_speech_clip(media / "speech.mp4", "The quick brown fox jumps over the lazy dog. It sits down.")
    make_music_clip(media / "music.mp4", seconds=2.0)
    make_video(media / "silent.mp4", seconds=2.0)
    names = ["speech.mp4", "music.mp4", "silent.mp4"]
    write_records(tmp_path / "records.json", [{"video": name} for name in names])
    config = tiny_config(
        tiny_model,
        shards=1,
        media_root=str(media),
        audio={"mode": "transcript", "asr_model": str(tiny_whisper)},
    )
    first = run_snakemake(tmp_path, config)
    assert jobs_run(first.stdout + first.stderr)["transcribe_shard"] == 1
    out = json.loads((tmp_path / "captions.json").read_text())
    by_name = {r["video"]: r for r in out}
    for record in by_name.values():
        assert record["caption_meta"]["status"] in CAPTIONED, record
        assert "transcript" in record
    durations = {name: transcribe.duration(str(media / name)) for name in names}
    for name in ("speech.mp4", "music.mp4"):
        segments = by_name[name]["transcript"]
        assert segments, name
        assert all(0 <= s["start"] < s["end"] <= durations[name] for s in segments), segments
        assert "audio" not in by_name[name]["caption_meta"]
    assert all(
        s["text"] for name in ("speech.mp4", "music.mp4") for s in by_name[name]["transcript"]
    )  # gibberish
    speech = by_name["speech.mp4"]["transcript"][0]
    assert speech["start"] == pytest.approx(0.5, abs=0.1)  # the espeak speech starts after 0.5 s of silence
    assert by_name["silent.mp4"]["transcript"] is None
    # the transcript is in the prompt: music and silent clips have the same 4 frames, not the same prompt
    assert by_name["music.mp4"]["caption_meta"]["frames"] == by_name["silent.mp4"]["caption_meta"]["frames"]
    assert (
        by_name["music.mp4"]["caption_meta"]["prompt_tokens"]
        > by_name["silent.mp4"]["caption_meta"]["prompt_tokens"]
    )
    assert by_name["silent.mp4"]["caption_meta"]["audio"] == "no audio"
    first_bytes = (tmp_path / "captions.json").read_bytes()

    edited = run_snakemake(tmp_path, {**config, "prompt": "Say what happens."})
    jobs = jobs_run(edited.stdout + edited.stderr)
    assert jobs["caption_shard"] == 1
    assert jobs["transcribe_shard"] == 0 and jobs["extract_frames"] == 0

    shutil.rmtree(tmp_path / "results" / "transcripts")  # ASR again, answered from the result store
    again = run_snakemake(tmp_path, config)
    assert jobs_run(again.stdout + again.stderr)["transcribe_shard"] == 1
    assert "0 to transcribe" in (tmp_path / "results/logs/transcribe_shard/0000.log").read_text()
    assert (tmp_path / "captions.json").read_bytes() == first_bytes


def test_a_window_hears_only_its_span_and_the_summary_hears_each_window(tmp_path, tiny_whisper):
    from vidcap.summary import summary_text

    segments = [
        {"start": 1.0, "end": 4.0, "text": "first words"},
        {"start": 9.0, "end": 12.0, "text": "across the cut"},
        {"start": 15.0, "end": 16.0, "text": "last words"},
    ]
    path = write_records(tmp_path / "t.jsonl", [{"digest": "d", "transcript": segments, "note": None}])
    transcripts = Transcripts(str(path), str(tiny_whisper), 1000)
    heard = transcripts.for_window(0, "d")
    first, second = heard(0.0, 10.0), heard(10.0, 20.0)
    assert "[1.0-4.0] first words" in first and "[9.0-10.0] across the cut" in first
    assert "last words" not in first and "first words" not in second
    assert "[10.0-12.0] across the cut" in second and "[15.0-16.0] last words" in second
    assert heard(5.0, 8.0) == ""  # no speech in the span: the window's prompt is as without audio
    windows = [
        {"start": 0.0, "end": 10.0, "caption": "a", "status": "ok"},
        {"start": 10.0, "end": 20.0, "caption": "b", "status": "ok"},
    ]
    result = {"caption_meta": {"windows": windows}}
    transcripts.annotate(0, result)
    assert [w["speech"] for w in windows] == ["first words across the cut", "across the cut last words"]
    text = summary_text("Summarise.", windows)
    assert "From 0.0 s to 10.0 s: a (speech: first words across the cut)" in text
    plain = [{k: v for k, v in w.items() if k != "speech"} for w in windows]
    assert "speech" not in summary_text("Summarise.", plain)  # audio off: the summary text as before


def test_the_gallery_shows_the_transcript_or_its_note_and_nothing_with_audio_off():
    from vidcap.report.gallery import gallery_card
    from vidcap.report.pages import gallery_html

    keys = with_defaults("keys", {})
    segment = {"start": 0.5, "end": 4.2, "text": "fox <jumps>"}
    records = [
        {"video": "a.mp4", "caption": "c", "transcript": [segment], "caption_meta": {"status": "ok"}},
        {
            "video": "b.mp4",
            "caption": "c",
            "transcript": None,
            "caption_meta": {"status": "ok", "audio": "no audio"},
        },
        {"video": "c.mp4", "caption": "c", "caption_meta": {"status": "ok"}},  # audio off
    ]
    cards = [gallery_card({"record": r, "entry": None, "index": i}, keys) for i, r in enumerate(records)]
    summary = {"records": 3, "status": {"ok": 3}}
    html = gallery_html(summary, cards, "some/model", 3, 10)
    assert "[0.5-4.2 s] fox &lt;jumps&gt;" in html and "(no audio)" in html
    assert html.count('<p class="transcript">') == 2
    assert "transcript" not in gallery_card({"record": records[2], "entry": None, "index": 2}, keys)


def test_no_audio_and_undecodable_audio_are_notes_and_start_no_engine(tmp_path):
    """Only the undecodable note is left out of the store (a later build tries the file again)."""
    from test_audio_track import test_a_corrupt_audio_stream_is_undecodable as make_broken

    make_broken(tmp_path)  # leaves tmp_path/broken.mkv, whose audio ffmpeg cannot decode
    make_video(tmp_path / "silent.mp4", seconds=1.0)
    shard = write_records(tmp_path / "s.jsonl", [{"video": "silent.mp4"}, {"video": "broken.mkv"}])
    job = {"language": None, "keys": {"video": "video"}, "media_root": str(tmp_path)}
    job.update(store=str(tmp_path / "store"), engine=with_defaults("engine", {}))
    (tmp_path / "asr").mkdir()
    job["asr_model"] = str(tmp_path / "asr")  # hashed for the key; never loaded, as no engine starts
    stats = transcribe.transcribe_shard(str(shard), str(tmp_path / "out.jsonl"), job)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["transcript"] for line in lines] == [None, None]
    assert lines[0]["note"] == "no audio" and lines[1]["note"].startswith("audio undecodable: ")
    assert "devices" not in stats  # no GPU slot taken, no engine started
    again = transcribe.transcribe_shard(str(shard), str(tmp_path / "out.jsonl"), job)
    assert again["stored"] == 1 and again["files"] == 2


def test_the_transcript_key_follows_the_asr_settings_and_the_file(tmp_path, tiny_whisper):
    clip = make_video(tmp_path / "a.mp4", seconds=1.0)
    base = {"asr_model": str(tiny_whisper), "language": None}
    identity = transcribe.asr_identity(base)
    assert transcribe.asr_identity({**base, "language": "en"}) != identity
    assert transcribe.asr_identity({**base, "asr_model": "openai/whisper-small"}) != identity
    key = transcribe.file_key(identity, str(clip))
    (tmp_path / "link.mp4").symlink_to(clip)
    assert transcribe.file_key(identity, str(tmp_path / "link.mp4")) == key  # the real file, not its name
    make_video(clip, seconds=2.0)  # replaced: new size and mtime
    assert transcribe.file_key(identity, str(clip)) != key
