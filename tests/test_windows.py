"""Long videos in windows: planning (pure), the frames step's windows and shot cuts (real ffmpeg),
folding window results into records, the summary prompt."""

import json
import os
from pathlib import Path

import pytest
from helpers import cut_tail, make_shots_video, make_video, write_records

from vidcap import config as vconfig
from vidcap import frame_store
from vidcap import settings as vsettings
from vidcap.caption import plan_records
from vidcap.decode import FrameError
from vidcap.engine import EngineFailure
from vidcap.frames import cached_sample, extract_frames
from vidcap.long_frames import cached_long, split_long
from vidcap.prompts import video_item
from vidcap.store import ResultStore
from vidcap.summary import needs_summary, summarize_shard, summary_text
from vidcap.windowed import WINDOW_KEY, fold, window_requests
from vidcap.windows import clip_phrase, is_long, nominal_edges, plan_windows

# 0.5 fps and 30-frame windows: 60 s windows on a 180 s video of three shots cut at 50 s and 110 s
FPS, WINDOW, MIN_WINDOW = 0.5, 30, 15
CUTS = (50, 110)


def contiguous(spans, duration):
    assert spans[0][0] == 0 and spans[-1][1] == pytest.approx(duration)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(s < e for s, e in spans)


# ----------------------------------------------------------------------------------------- planning
def test_windows_at_multiples_of_a_window():
    spans = plan_windows(180, FPS, WINDOW, MIN_WINDOW)
    assert spans == [(0, 60), (60, 120), (120, 180)]
    assert plan_windows(180, 2.0, 256, 128) == [(0, 180)]  # 52 s left = 104 frames < 128: joins
    assert plan_windows(300, 2.0, 256, 128) == [(0, 128), (128, 300)]  # 88 frames left join the second
    contiguous(plan_windows(3600, 2.0, 256, 128), 3600)


@pytest.mark.parametrize(
    "duration, edges",
    [
        (60, []),  # one window
        (80, []),  # a 20 s remainder (10 frames) joins the one window
        (95, [60]),  # a 35 s remainder (17 frames) is a window of its own
        (130, [60]),  # 10 s left over joins the second window (60..130)
    ],
)
def test_a_remainder_under_min_window_frames_joins_the_previous_window(duration, edges):
    assert nominal_edges(duration, FPS, WINDOW, MIN_WINDOW) == edges
    contiguous(plan_windows(duration, FPS, WINDOW, MIN_WINDOW), duration)


def test_edges_move_to_the_nearest_cut_within_half_a_window():
    spans = plan_windows(180, FPS, WINDOW, MIN_WINDOW, cuts=[50.0, 110.0, 170.0], shots=True)
    assert spans == [(0, 50), (50, 110), (110, 180)]
    # a cut 31 s from an edge is out of reach (half a window is 30 s): the edge stays
    assert plan_windows(180, FPS, WINDOW, MIN_WINDOW, cuts=[29.0], shots=True) == [
        (0, 60),
        (60, 120),
        (120, 180),
    ]
    # two edges reaching the same cut merge into one
    assert plan_windows(180, FPS, WINDOW, MIN_WINDOW, cuts=[90.0], shots=True) == [(0, 90), (90, 180)]
    # shots off: cuts are ignored
    assert plan_windows(180, FPS, WINDOW, MIN_WINDOW, cuts=[50.0], shots=False)[0] == (0, 60)


def test_auto_windows_only_videos_longer_than_one_window():
    assert not is_long(60, FPS, WINDOW) and is_long(61, FPS, WINDOW)
    assert clip_phrase(50, 110) == "This is a clip from 50.0 s to 110.0 s of a longer video."


# ---------------------------------------------------------------------------------------- frames step
def frame_params(**over):
    return vconfig.with_defaults(
        "frames",
        {"fps": FPS, "min_frames": 4, "max_frames": 64, "min_pixels": 3136, "max_pixels": 12544}
        | {"max_vision_tokens": 3000, "patch_factor": 28}
        | over,
    )


def long_video(**over):
    return {"mode": "windows", "window_frames": WINDOW, "min_window_frames": MIN_WINDOW, "shots": True} | over


@pytest.fixture(scope="module")
def shots_video(tmp_path_factory):
    return make_shots_video(tmp_path_factory.mktemp("shots") / "three shots.mp4", cuts=CUTS, seconds=180)


def test_window_edges_follow_shot_cuts(shots_video, tmp_path):
    item = cached_long(str(shots_video), frame_params(), long_video(), tmp_path)
    spans = [(w["start"], w["end"]) for w in item["windows"]]
    assert len(spans) >= 2
    contiguous(spans, 180)
    for edge in [s for s, _ in spans[1:]]:
        assert min(abs(edge - c) for c in CUTS) <= 1.5, spans
    assert [min(abs(c - cut) for c in item["meta"]["cuts"]) <= 1.5 for cut in CUTS] == [True, True]
    for window in item["windows"]:
        stamps = window["meta"]["timestamps"]  # the frames' own times lie inside their window
        assert window["start"] - 1e-6 <= stamps[0] and stamps[-1] < window["end"], (window["start"], stamps)
        assert len(stamps) == window["meta"]["sampled_frames"]
        # what Qwen2.5-VL derives its temporal step from: the window's own sampling rate, not the video's
        meta, span = window["meta"], window["end"] - window["start"]
        rate = len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"]
        assert rate == pytest.approx(len(stamps) / span, rel=0.02)
    again = cached_long(str(shots_video), frame_params(), long_video(), tmp_path)
    assert again["cached"] and again["windows"] == item["windows"]


def test_without_shots_edges_sit_at_window_multiples(shots_video, tmp_path):
    item = cached_long(str(shots_video), frame_params(), long_video(shots=False), tmp_path)
    assert [(w["start"], w["end"]) for w in item["windows"]] == [(0, 60), (60, 120), (120, 180)]
    assert item["meta"]["cuts"] == []  # no scene branch in the decode


def test_a_truncated_tail_fails_its_window_only(shots_video, tmp_path):
    cut = cut_tail(shots_video, tmp_path / "cut.mp4", 100)
    item = cached_long(str(cut), frame_params(), long_video(shots=False), tmp_path)
    assert [("error" in w) for w in item["windows"]] == [False, False, True]
    assert "no decodable frames from 120.0 s" in item["windows"][2]["error"]
    assert "frames not decodable" in item["windows"][1]["meta"]["notes"][0]  # 100..120 s is gone


def test_a_short_clip_under_auto_is_sampled_as_today(tmp_path):
    clip = make_video(tmp_path / "short.mp4", seconds=2)
    auto = cached_long(str(clip), frame_params(), long_video(mode="auto"), tmp_path / "a")
    today = cached_sample(str(clip), "video", frame_params(), tmp_path / "b")
    assert "windows" not in auto
    assert auto["meta"] == today["meta"] | {"seconds": auto["meta"]["seconds"]}


def test_auto_windows_long_videos_also_truncated_or_cached_as_single_before(shots_video, tmp_path):
    cached_sample(str(shots_video), "video", frame_params(), tmp_path)  # an earlier build with mode single
    item = cached_long(str(shots_video), frame_params(), long_video(mode="auto"), tmp_path)
    assert len(item["windows"]) == 3
    cut = cut_tail(shots_video, tmp_path / "cut.mp4", 100)
    item = cached_long(str(cut), frame_params(), long_video(mode="auto", shots=False), tmp_path)
    assert [("error" in w) for w in item["windows"]] == [False, False, True]
    short_cut = cut_tail(make_video(tmp_path / "short.mp4", seconds=8), tmp_path / "short-cut.mp4", 4)
    with pytest.raises(FrameError, match="truncated file"):  # short: one prompt, failing as today
        cached_long(str(short_cut), frame_params(), long_video(mode="auto"), tmp_path)


def test_only_one_video_records_are_windowed(tmp_path):
    entries = [{"videos": [None], "images": []}, {"videos": [None, None], "images": []}]
    wanted = {
        ("video", "a.mp4"): [(0, "videos", 0), (1, "videos", 0)],
        ("video", "b.mp4"): [(1, "videos", 1)],
    }
    split = split_long(entries, wanted, long_video())
    assert split == {
        ("long", "a.mp4"): [(0, "videos", 0)],
        ("video", "a.mp4"): [(1, "videos", 0)],
        ("video", "b.mp4"): [(1, "videos", 1)],
    }
    assert split_long(entries, wanted, long_video(mode="single")) is wanted


def test_frames_step_writes_windowed_manifest_entries(shots_video, tmp_path):
    short = make_video(tmp_path / "short.mp4", seconds=1)
    records = [{"video": [str(shots_video)]}, {"video": [str(short)]}]
    shard = write_records(tmp_path / "shard.jsonl", records)
    config = vconfig.load(
        overrides={
            "input": str(shard),
            "model": "none",
            "frames": {"fps": FPS, "min_frames": 4, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544},
            "long_video": {"window_frames": WINDOW, "min_window_frames": MIN_WINDOW},
        }
    )
    settings = vsettings.frames_settings(config, "0") | {"cache_dir": str(tmp_path / "cache")}
    manifest = extract_frames(str(shard), str(tmp_path / "m.json"), settings)
    long_item, short_item = (e["videos"][0] for e in manifest["records"])
    assert len(long_item["windows"]) == 3 and "windows" not in short_item
    assert json.loads((tmp_path / "m.json").read_text())["records"][0]["error"] is None
    # the cache deleted since: the caption job extracts the windows again before sending them
    for window in long_item["windows"]:
        os.unlink(window["frames"])
    job = {
        "keys": config["keys"],
        "prompt": "Describe.",
        "sampling": config["sampling"],
        "frames_step": settings,
    }
    store = ResultStore(tmp_path / "store")
    results, pending = plan_records(str(shard), str(tmp_path / "m.json"), job, "identity", store)
    assert len(results) == 5 and [p.slot for p in pending] == [1, 2, 3, 4]  # the clip, then 3 windows
    assert all(os.path.exists(p.entry["videos"][0]["frames"]) for p in pending)
    window = pending[1].entry["videos"][0]  # a window's request reads its (compact) cache file
    assert len(video_item(window)[0]) == len(window["meta"]["frames_indices"])
    # a window file zero-filled by a crash is extracted again before it is sent, never read as frames
    size = os.path.getsize(window["frames"])
    Path(window["frames"]).write_bytes(bytes(size))
    _, pending = plan_records(str(shard), str(tmp_path / "m.json"), job, "identity", store)
    assert all(
        frame_store.is_intact(p.entry["videos"][0]["frames"], p.entry["videos"][0]["content"])
        for p in pending
    )


# ---------------------------------------------------------------------------------------- caption job
def test_window_results_fold_into_the_record_in_time_order():
    windows = [
        {"start": 0.0, "end": 50.0, "frames": "w0.npy", "meta": {"frames_indices": [0, 1, 2, 3]}},
        {"start": 50.0, "end": 110.0, "error": "no decodable frames"},
        {"start": 110.0, "end": 180.0, "frames": "w2.npy", "meta": {"frames_indices": [4, 5, 6, 7]}},
    ]
    entry = {
        "digest": "d",
        "videos": [{"path": "v.mp4", "meta": {}, "windows": windows}],
        "images": [],
        "error": None,
    }
    record = {
        "digest": "d",
        "caption": None,
        "caption_meta": {"status": "error", "error": None, "frames": 0},
        "keys": [],
    }
    results = [record]
    pending = window_requests(0, "d", entry, "Describe.", None, results, "identity")
    assert [p.window for p in pending] == [0, 2] and [p.slot for p in pending] == [1, 2]
    assert record["keys"] == [p.key for p in pending] and len(set(record["keys"])) == 2
    assert pending[1].prompt == "This is a clip from 110.0 s to 180.0 s of a longer video. Describe."
    for p, text in zip(pending, ["first", "third"]):
        results[p.slot]["caption"] = text
        results[p.slot]["caption_meta"].update(status="ok", prompt_tokens=10, output_tokens=3, seed=1)
    out = fold(results, 1)
    assert len(out) == 1 and WINDOW_KEY not in out[0]
    meta = out[0]["caption_meta"]
    assert [(w["start"], w["status"], w["caption"]) for w in meta["windows"]] == [
        (0.0, "ok", "first"),
        (50.0, "error", None),
        (110.0, "ok", "third"),
    ]
    assert meta["status"] == "ok" and meta["prompt_tokens"] == 20 and meta["frames"] == 8
    assert needs_summary(out[0])
    text = summary_text("Summarise.", list(reversed(meta["windows"])))
    assert text.splitlines() == [
        "Summarise.",
        "",
        "From 0.0 s to 50.0 s: first",
        "From 110.0 s to 180.0 s: third",
    ]


# ---------------------------------------------------------------------------------------- summary step
def summary_lines(tmp_path):
    windows = [
        {"start": 0.0, "end": 60.0, "caption": "a", "status": "ok"},
        {"start": 60.0, "end": 90.0, "caption": "b", "status": "ok"},
    ]
    one = {"start": 0.0, "end": 20.0, "caption": "c", "status": "ok"}
    return [
        {"digest": "d1", "caption": "short clip", "caption_meta": {"status": "ok", "error": None}},
        {"digest": "d2", "caption": "c", "caption_meta": {"status": "ok", "error": None, "windows": [one]}},
        {
            "digest": "d3",
            "caption": None,
            "caption_meta": {"status": "error", "error": "x", "windows": windows},
        },
    ], windows


def test_a_shard_without_two_window_records_starts_no_engine(tmp_path):
    lines, _ = summary_lines(tmp_path)
    captions = write_records(tmp_path / "captions.jsonl", lines)
    settings = {
        "model": "/nonexistent/model",
        "prompt": "Sum up.",
        "system_prompt": "",
        "max_model_len": 1024,
    }
    counts = summarize_shard(str(captions), str(tmp_path / "out.jsonl"), settings)
    assert counts == {"records": 3, "summarized": 0, "summary_errors": 0, "stored": 0}
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == lines


def test_an_unreachable_summary_server_fails_the_job_and_writes_nothing(tmp_path):
    lines, windows = summary_lines(tmp_path)
    lines[2]["caption_meta"].update(status="ok", error=None)  # two captioned windows: needs a summary
    captions = write_records(tmp_path / "captions.jsonl", lines)
    settings = {
        "model": "m",
        "served_name": "m",
        "prompt": "Sum up.",
        "system_prompt": "",
        "max_model_len": 1024,
        "engine": {"backend": "server", "url": "http://127.0.0.1:9", "retries": 0},
    }
    with pytest.raises(EngineFailure, match="server unreachable"):
        summarize_shard(str(captions), str(tmp_path / "out.jsonl"), settings)
    assert not (tmp_path / "out.jsonl").exists()


# ------------------------------------------------------------------ windowed records as short records are
def test_min_window_frames_above_window_frames_is_a_config_error_naming_both_keys():
    with pytest.raises(
        vconfig.ConfigError, match=r"long_video.min_window_frames 40 .*long_video.window_frames 30"
    ):
        vconfig.load(
            overrides={
                "input": "r.json",
                "model": "m",
                "long_video": {"window_frames": 30, "min_window_frames": 40},
            }
        )
    vconfig.load(
        overrides={
            "input": "r.json",
            "model": "m",
            "long_video": {"window_frames": 30, "min_window_frames": 30},
        }
    )


def one_window_entry():
    window = {"start": 0.0, "end": 20.0, "frames": "w0.npy", "meta": {"frames_indices": [0, 1, 2, 3]}}
    return {
        "digest": "d",
        "videos": [{"path": "v.mp4", "meta": {}, "windows": [window]}],
        "images": [],
        "error": None,
    }


def test_a_one_window_video_is_not_told_it_is_a_clip_and_keeps_every_answer_field():
    record = {"digest": "d", "caption": None, "caption_meta": {"status": "error", "error": None}, "keys": []}
    results = [record]
    (item,) = window_requests(0, "d", one_window_entry(), "Describe.", None, results, "identity")
    assert item.prompt == "Describe."  # the whole video: no "clip from 0.0 s to 20.0 s of a longer video"
    results[1].update(caption="s", captions=["s", "t"], caption_json={"summary": "s", "events": []})
    results[1]["caption_meta"].update(status="ok", prompt_tokens=10, output_tokens=3, finish_reason="stop")
    (out,) = fold(results, 1)
    assert (out["caption"], out["captions"], out["caption_json"]) == (
        "s",
        ["s", "t"],
        {"summary": "s", "events": []},
    )
    assert out["caption_meta"]["windows"][0]["caption_json"] == {"summary": "s", "events": []}


def test_window_event_times_end_in_the_video_clock_per_model_family(tmp_path):
    from vidcap.structured import check_events
    from vidcap.windowed import times_absolute, window_clock

    window = {"start": 60.0, "end": 120.0}
    # Qwen3-VL reads absolute frame times: its events lie in the window's span of the video
    events = [{"start": 70.0, "end": 80.0}, {"start": 10.0, "end": 130.0}]
    notes = check_events(events, window_clock(window, absolute=True))
    assert events == [{"start": 70.0, "end": 80.0}, {"start": 60.0, "end": 120.0}]
    assert notes[0] == "event 1: 10-130 s clamped to 60-120 s"
    # Qwen2/2.5-VL see the window from 0 s: clamped to its length, then moved to the video's time
    events = [{"start": 10.0, "end": 20.0}, {"start": 50.0, "end": 75.0}]
    notes = check_events(events, window_clock(window, absolute=False))
    assert events == [{"start": 70.0, "end": 80.0}, {"start": 110.0, "end": 120.0}]
    assert notes == ["event 1: 50-75 s clamped to 50-60 s"]
    for model_type, absolute in (("qwen3_vl", True), ("qwen2_5_vl", False), ("qwen2_vl", False)):
        folder = tmp_path / model_type
        folder.mkdir()
        config = {"model_type": model_type, "vision_config": {"patch_size": 16 if absolute else 14}}
        (folder / "config.json").write_text(json.dumps(config))
        assert times_absolute(str(folder)) is absolute
    entry = one_window_entry()
    (item,) = window_requests(
        0, "d", entry, "Describe.", None, [{"caption_meta": {}, "keys": []}], "i", str(tmp_path / "qwen3_vl")
    )
    assert item.clock == window_clock(entry["videos"][0]["windows"][0], absolute=True)


def test_the_summary_asks_a_records_own_question_and_reads_window_objects(tmp_path):
    windows = [
        {
            "start": 60.0,
            "end": 90.0,
            "caption": "b",
            "status": "ok",
            "caption_json": {"summary": "b", "events": []},
        },
        {"start": 0.0, "end": 60.0, "caption": "a", "status": "ok"},
    ]
    assert summary_text("Sum up.", windows, "How many cars?").splitlines() == [
        "Sum up.",
        "",
        "From 0.0 s to 60.0 s: a",
        'From 60.0 s to 90.0 s: {"summary": "b", "events": []}',
        "",
        "Each clip above was asked: How many cars?",
        "Answer this for the whole video, without mentioning clips.",
    ]
    from vidcap.summary import record_questions

    shard = write_records(tmp_path / "s.jsonl", [{"q": "How many cars?"}, {"q": "Describe."}, {}])
    settings = {"keys": {"prompt": "q"}, "caption_prompt": "Describe."}
    assert list(record_questions(str(shard), settings)) == ["How many cars?", None, None]
    questions = record_questions(str(shard), {"caption_prompt": "Describe."})  # no keys.prompt: none
    assert [next(questions) for _ in range(3)] == [None, None, None]
