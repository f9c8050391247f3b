"""A record's videos and images share one vision-token budget, split before extraction (vidcap.record_budget).

At the default settings (Qwen2.5-VL-7B, max_model_len 51200, max_tokens 2048, prompt_tokens 512: 48,640
vision tokens) a 60 s 1080p clip alone plans 43,200 tokens; two or three of them in one record must plan
within 48,640 together, so the caption job never halves them. Metadata only here (no decoding); the real
frames step and the engine's own count are in test_record_budget_engine.py.
"""

import json
from pathlib import Path

from helpers import make_video, write_records

from vidcap import budget, record_budget
from vidcap.config import build_config, with_defaults
from vidcap.frames import cache_key, extract_frames, load_image
from vidcap.settings import frame_params

FULL_HD_MINUTE = {"duration": 60.0, "height": 1080, "width": 1920, "times": [i / 30 for i in range(1800)]}


def default_params() -> dict:
    return with_defaults("frames", frame_params(build_config([], [])))


def planned(params: dict, caps: list, infos: list) -> list[dict]:
    return [
        budget.plan_video(
            i["duration"], i["height"], i["width"], record_budget.with_cap(params, c), len(i["times"])
        )
        for i, c in zip(infos, caps)
    ]


def test_one_video_keeps_todays_plan_at_defaults():
    params = default_params()
    assert params["max_vision_tokens"] == 48640
    assert record_budget.video_caps(48640, 0, [FULL_HD_MINUTE], params) == [None]
    assert planned(params, [None], [FULL_HD_MINUTE])[0]["vision_tokens"] == 43200


def test_two_and_three_full_hd_minutes_share_the_default_budget():
    params = default_params()
    config = build_config([], [])
    room = (
        config["engine"]["max_model_len"]
        - config["sampling"]["max_tokens"]
        - config["frames"]["prompt_tokens"]
    )
    for n in (2, 3):
        infos = [FULL_HD_MINUTE] * n
        caps = record_budget.video_caps(params["max_vision_tokens"], 0, infos, params)
        assert all(c is not None and c <= 48640 // n for c in caps), caps
        plans = planned(params, caps, infos)
        assert all(p["vision_tokens"] <= c for p, c in zip(plans, caps))
        assert sum(p["vision_tokens"] for p in plans) <= room  # nothing left for fit_to_context to halve
        assert all(p["n_frames"] == 120 for p in plans)  # 2 fps kept: pixels go first (frames.reduce)
    # per video, as before, they would plan 2 x 43,200 and 3 x 43,200 against 48,640
    assert room < 2 * 43200


def test_a_short_clip_keeps_its_plan_and_gives_the_rest_to_the_long_one():
    params = default_params()
    short = {"duration": 20.0, "height": 480, "width": 854, "times": [i / 30 for i in range(600)]}
    caps = record_budget.video_caps(48640, 0, [FULL_HD_MINUTE, short], params)
    assert record_budget.natural_plan(short, params)["vision_tokens"] == 10200  # 40 frames of 840x476
    assert caps[1] is None  # under its share by duration (48,640 x 20 / 80)
    assert caps[0] == 48640 - record_budget.natural_plan(short, params)["vision_tokens"]


def test_water_fill_splits_by_duration():
    assert record_budget.water_fill(100, [1.0, 3.0], [1000, 1000]) == [25, 75]
    assert record_budget.water_fill(100, [1.0, 3.0], [10, 1000]) == [None, 90]
    assert record_budget.water_fill(100, [1.0, 1.0], [10, 20]) == [None, None]


def test_images_come_first_at_their_own_size(tmp_path):
    from PIL import Image

    Image.new("RGB", (1920, 1080)).save(tmp_path / "i.png")
    params = default_params()
    tokens = record_budget.image_tokens(str(tmp_path / "i.png"), params)
    assert tokens == load_image(str(tmp_path / "i.png"), params)[1]["vision_tokens"] == 1222  # 26 x 47
    assert record_budget.video_caps(48640, tokens, [FULL_HD_MINUTE], params) == [None]  # 43,200 + 1,222 fit
    caps = record_budget.video_caps(48640, tokens, [FULL_HD_MINUTE] * 2, params)
    assert caps == [(48640 - 1222) // 2] * 2
    assert sum(p["vision_tokens"] for p in planned(params, caps, [FULL_HD_MINUTE] * 2)) + tokens <= 48640


def small_frames(**extra) -> dict:
    return {"fps": 2.0, "min_frames": 4, "max_frames": 4, "min_pixels": 784, "max_pixels": 448 * 448, **extra}


def test_frames_step_plans_each_record_within_its_budget(tmp_path):
    for name in ("a", "b", "c"):
        make_video(tmp_path / f"{name}.mp4", seconds=2, size="448x448", rate=4)
    records = [{"video": ["a.mp4"]}, {"video": ["a.mp4", "b.mp4"]}, {"video": ["a.mp4", "b.mp4", "c.mp4"]}]
    shard = write_records(tmp_path / "s.jsonl", records)
    frames = small_frames(max_vision_tokens=958)
    settings = {
        "keys": {},
        "frames": frames,
        "cache_dir": str(tmp_path / "cache"),
        "media_root": str(tmp_path),
    }
    manifest = extract_frames(str(shard), str(tmp_path / "m.json"), settings)
    single, double, triple = manifest["records"]
    assert single["videos"][0]["meta"]["vision_tokens"] == 512  # 2 pairs of 16 x 16: as before
    params = with_defaults("frames", frames)
    # a video alone in its record: the same cache entry (key and pixels) as without record budgets
    assert Path(single["videos"][0]["frames"]).stem == cache_key(str(tmp_path / "a.mp4"), "video", params)
    for entry in (double, triple):
        tokens = [v["meta"]["vision_tokens"] for v in entry["videos"]]
        assert sum(tokens) <= 958 < 512 * len(tokens), tokens
        assert all(v["meta"]["budget_tokens"] == 958 // len(tokens) for v in entry["videos"])
    assert json.loads((tmp_path / "m.json").read_text())["records"][1]["error"] is None
