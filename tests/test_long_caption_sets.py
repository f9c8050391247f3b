"""Caption sets on long (windowed) videos: each window answers every visual entry in the caption job, the
summary step answers each entry for the whole video, and derived entries rewrite the final texts.

The slow test calls the caption and summary jobs directly (settings built from a config as the workflow
builds them) on the session's ``vllm serve`` of the tiny random Qwen2-VL: every caption, summary and
derived answer is gibberish; the test checks fields, statuses, which requests are sent, and bytes.
"""

import json

import pytest
from helpers import CAPTIONED, SERVER_KEY_ENV, make_shots_video, make_video, tiny_config, write_records

from vidcap import caption_set
from vidcap import config as vconfig
from vidcap import settings as vsettings
from vidcap.windowed import WINDOW_KEY, window_requests
from vidcap.windowed import fold as fold_windows

SMALL_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 24}, "moving": {"type": "boolean"}},
    "required": ["summary", "moving"],
    "additionalProperties": False,
}


def entries(schema: str) -> dict:
    """Two visual entries (one json, sampled: greedy random weights loop in the JSON grammar's whitespace)
    and one json entry derived from the dense one."""
    return {
        "dense": {"prompt": "Describe every detail.", "max_tokens": 8},
        "camera": {
            "prompt": "How does the camera move?",
            "output_format": "json",
            "output_schema": schema,
            "max_tokens": 48,
            "sampling": {"temperature": 1.0},
        },
        "t2v": {
            "prompt": "Rewrite as JSON.",
            "from": "dense",
            "output_format": "json",
            "output_schema": schema,
            "max_tokens": 48,
            "sampling": {"temperature": 1.0},
        },
    }


# ----------------------------------------------------------------------------------------- fast
class _Judge:
    json = False
    candidates = {"keep": "first"}


def test_window_answers_of_an_entry_fold_into_the_windows_and_leave_the_entry_to_the_summary():
    windows = [
        {"start": 0.0, "end": 50.0, "frames": "w0.npy", "meta": {"frames_indices": [0, 1]}},
        {"start": 50.0, "end": 110.0, "error": "no decodable frames"},
        {"start": 110.0, "end": 180.0, "frames": "w2.npy", "meta": {"frames_indices": [2, 3]}},
    ]
    entry = {"digest": "d", "videos": [{"path": "v.mp4", "meta": {}, "windows": windows}], "images": []}
    entry["error"] = None
    record = {"digest": "d", "caption": None, "caption_meta": {"status": "error", "error": None, "frames": 4}}
    record["keys"] = []
    results = [record]
    primary = window_requests(0, "d", entry, "Describe.", None, results, "identity")
    ask = caption_set.Ask("dense", {"prompt": "Dense."}, _Judge(), "dense-identity")
    results.append({"digest": "d", "caption": None, "caption_meta": {"frames": 4}, "_set": [0, "dense"]})
    asked = window_requests(0, "d", entry, "Dense.", None, results, ask.identity, ask=ask, marker="_set")
    assert [p.window for p in asked] == [0, 2] and all(p.ask is ask for p in asked)
    assert asked[1].prompt == "This is a clip from 110.0 s to 180.0 s of a longer video. Dense."
    assert len(set(record["keys"])) == 4  # the primary's and the entry's window keys differ
    for p in primary + asked:
        results[p.slot]["caption"] = f"{'entry' if p.ask else 'primary'} {p.window}"
        results[p.slot]["caption_meta"].update(status="ok", prompt_tokens=10, output_tokens=3, seed=1)
    out = fold_windows(caption_set.fold(results, 1, [ask], "_set"), 1)
    (result,) = out
    assert WINDOW_KEY not in result and "_set" not in result
    meta = result["caption_meta"]
    assert [w["caption"] for w in meta["windows"]] == ["primary 0", None, "primary 2"]
    assert [w["set"]["dense"]["caption"] for w in meta["windows"]] == ["entry 0", None, "entry 2"]
    assert meta["windows"][1]["set"]["dense"]["status"] == "error"
    assert result["caption_set"] == {"dense": None}  # the summary step writes it
    assert meta["set"]["dense"]["status"] == "ok" and meta["set"]["dense"]["summary"] is None
    assert "windows" not in meta["set"]["dense"] and meta["set"]["dense"]["prompt_tokens"] == 20


def test_a_one_window_video_takes_its_windows_entry_answers_with_every_field():
    window = {"start": 0.0, "end": 20.0, "frames": "w0.npy", "meta": {"frames_indices": [0, 1]}}
    entry = {"digest": "d", "videos": [{"path": "v.mp4", "meta": {}, "windows": [window]}], "images": []}
    entry["error"] = None
    record = {"digest": "d", "caption": None, "caption_meta": {"status": "error", "error": None, "frames": 2}}
    record["keys"] = []
    results = [record]
    window_requests(0, "d", entry, "Describe.", None, results, "identity")
    judge = type("JsonJudge", (_Judge,), {"json": True})()
    ask = caption_set.Ask("camera", {"prompt": "Camera?"}, judge, "camera-identity")
    results.append({"digest": "d", "caption": None, "caption_meta": {"frames": 2}, "_set": [0, "camera"]})
    (item,) = window_requests(0, "d", entry, "Camera?", None, results, ask.identity, ask=ask, marker="_set")
    assert item.prompt == "Camera?"  # the whole video: no clip phrase
    for slot, text in ((1, "primary"), (item.slot, "pans")):
        results[slot].update(caption=text, caption_json={"summary": text})
        results[slot]["caption_meta"].update(
            status="ok", prompt_tokens=5, output_tokens=2, finish_reason="stop"
        )
    (result,) = fold_windows(caption_set.fold(results, 1, [ask], "_set"), 1)
    assert result["caption_set"] == {"camera": "pans"}
    assert result["caption_set_json"] == {"camera": {"summary": "pans"}}
    meta = result["caption_meta"]
    assert meta["set"]["camera"]["status"] == "ok" and "summary" not in meta["set"]["camera"]
    assert meta["windows"][0]["set"]["camera"]["caption_json"] == {"summary": "pans"}


def test_visual_entries_reach_the_summary_params_only_when_videos_are_windowed():
    cfg = vconfig.load(
        overrides={
            "input": "r.json",
            "long_video": {"summary_max_tokens": 77},
            "caption_set": {"a": {"prompt": "A?"}, "b": {"prompt": "B?", "max_tokens": 5}},
        }
    )
    visual = vsettings.summary_params(cfg)["visual"]
    assert [(p["name"], p["sampling"]["max_tokens"]) for p in visual] == [("a", 77), ("b", 5)]
    single = {**cfg, "long_video": {**cfg["long_video"], "mode": "single"}}
    assert "visual" not in vsettings.summary_params(single)
    assert "visual" not in vsettings.summary_params({**cfg, "caption_set": {}})


# ----------------------------------------------------------------------------------------- slow
def build(work, cfg, out, store):
    """One caption job and one summary job of shard 0 (``store``: the result store's folder); returns
    the summary job's output lines, the caption job's stats and the summary job's counts."""
    from vidcap.caption import caption_shard
    from vidcap.summary import summarize_shard

    shard, manifest = work / "shard.jsonl", work / "manifest.json"
    job = {**vsettings.caption_job(cfg, "0"), "store": str(store)}
    job["frames_step"]["cache_dir"] = str(work / "cache")
    stats = caption_shard(str(shard), str(manifest), str(out.with_suffix(".captions.jsonl")), job)
    summary = {**vsettings.summary_job(cfg), "store": str(store)}
    counts = summarize_shard(
        str(out.with_suffix(".captions.jsonl")), str(out), summary, shard_path=str(shard)
    )
    return [json.loads(line) for line in out.read_text().splitlines()], stats, counts


@pytest.mark.slow
def test_a_windowed_and_a_short_record_answer_every_entry_alike(tiny_model, tiny_server, tmp_path):
    """A 180 s video of three windows and a 1 s clip, a set of two visual entries (one json) and one json
    entry derived from a visual one: both records have every entry with the same fields; the windowed
    record's visual entries are summaries of its window answers; a rebuild gives the same bytes; a new
    visual entry sends only its own requests (one per window and for the clip, one summary)."""
    from vidcap.frames import extract_frames

    make_shots_video(tmp_path / "shots.mp4", cuts=(50, 110), seconds=180)
    make_video(tmp_path / "short.mp4", seconds=1)
    records = [{"video": ["shots.mp4"], "id": 0}, {"video": ["short.mp4"], "id": 1}]
    write_records(tmp_path / "records.json", records)
    write_records(tmp_path / "shard.jsonl", records)
    (tmp_path / "small.schema.json").write_text(json.dumps(SMALL_SCHEMA))
    server = {"backend": "server", "url": tiny_server, "api_key_env": SERVER_KEY_ENV}
    overrides = tiny_config(
        tiny_model,
        input=str(tmp_path / "records.json"),
        frames={"fps": 0.5, "max_frames": 8},
        long_video={"window_frames": 30, "min_window_frames": 15, "summary_max_tokens": 8},
        engine=server,
        caption_set=entries(str(tmp_path / "small.schema.json")),
    )
    cfg = vconfig.load(overrides=overrides)
    frames = vsettings.frames_settings(cfg, "0") | {"cache_dir": str(tmp_path / "cache")}
    extract_frames(str(tmp_path / "shard.jsonl"), str(tmp_path / "manifest.json"), frames)

    (long, short), stats, counts = build(tmp_path, cfg, tmp_path / "a.jsonl", tmp_path / "store")
    windows = long["caption_meta"]["windows"]
    assert len(windows) == 3 and "windows" not in short["caption_meta"]
    assert stats["requests"] == 3 * 3 + 3  # primary, dense and camera per window; the same for the clip
    assert counts["entry_summaries"] == {"asked": 2, "stored": 0}
    assert counts["derived"]["asked"] == 2
    assert list(long) == list(short)  # one schema for every record
    for record in (long, short):
        assert list(record["caption_set"]) == ["dense", "camera", "t2v"]
        assert list(record["caption_set_json"]) == ["camera", "t2v"]  # derived json where visual json is
        meta = record["caption_meta"]["set"]
        assert all(meta[n]["status"] in CAPTIONED for n in meta), meta
        assert "json" not in meta["t2v"]
        for name in ("dense", "camera"):
            assert isinstance(record["caption_set"][name], str)
            assert ("summary" in meta[name]) == (record is long)
    for name in ("dense", "camera"):  # the whole video's entry is the summary of its window answers
        summary = long["caption_meta"]["set"][name]["summary"]
        assert (
            summary["status"] in CAPTIONED and summary["prompt_tokens"] > 20 and summary["output_tokens"] > 0
        )
        assert all(w["set"][name]["status"] in CAPTIONED for w in windows)
    assert long["caption_meta"]["set"]["dense"]["summary"]["output_tokens"] <= 8  # the entry's max_tokens

    # rebuilt from scratch (a new store) and from the store: the same bytes
    _, again, _ = build(tmp_path, cfg, tmp_path / "b.jsonl", tmp_path / "store2")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    _, stored, counts = build(tmp_path, cfg, tmp_path / "c.jsonl", tmp_path / "store")
    assert stored["requests"] == 0 and counts["entry_summaries"]["asked"] == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()

    # a third visual entry: its three window requests and the clip's, then its one summary
    more = vconfig.load(
        overrides={
            **overrides,
            "caption_set": {**overrides["caption_set"], "motion": {"prompt": "What moves?"}},
        }
    )
    (long2, short2), added, counts = build(tmp_path, more, tmp_path / "d.jsonl", tmp_path / "store")
    assert added["requests"] == 3 + 1
    assert counts["entry_summaries"] == {"asked": 1, "stored": 2} and counts["derived"]["asked"] == 0
    assert list(long2["caption_set"]) == ["dense", "camera", "t2v", "motion"] == list(short2["caption_set"])
    assert long2["caption_meta"]["set"]["motion"]["summary"]["status"] in CAPTIONED
    assert [long2["caption_set"][n] for n in ("dense", "camera", "t2v")] == [
        long["caption_set"][n] for n in ("dense", "camera", "t2v")
    ]
