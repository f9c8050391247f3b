"""``vidcap plan``: the figures a build will have, from probes only (vidcap.plan).

Checked against the real frames step on the same input: the vision tokens it plans, the frame cache it
writes, and the result-store keys the caption job computes (vidcap.caption.plan_records).
"""

import gc
import json

import pytest
import yaml
from helpers import CAPTIONED, make_video, write_records
from PIL import Image

from vidcap.__main__ import main
from vidcap.caption import caption_shard, plan_records
from vidcap.config import build_config
from vidcap.engine import start_engine
from vidcap.frames import disk_usage, extract_frames
from vidcap.plan import format_plan, plan_build
from vidcap.prompts import chat_template
from vidcap.provenance import model_identity
from vidcap.result_keys import caption_identity
from vidcap.settings import caption_job, caption_params, caption_params_of_job, frames_settings
from vidcap.store import ResultStore

RECORDS = [
    {"video": ["a.mp4"]},
    {"video": ["a.mp4", "b.mp4"]},
    {"video": ["a.mp4", "b.mp4", "c.mp4"], "prompt": "Compare the clips."},
    {"video": ["c.mp4"], "image": ["i.png"]},
    {"video": ["b.mp4"]},
    {"video": ["missing.mp4"]},
]


def build(tmp_path, records=RECORDS, **extra) -> dict:
    make_video(tmp_path / "a.mp4", seconds=2, size="448x448", rate=4)
    make_video(tmp_path / "b.mp4", seconds=3, size="448x336", rate=4)
    make_video(tmp_path / "c.mp4", seconds=1, size="320x448", rate=8)
    Image.new("RGB", (300, 200), "red").save(tmp_path / "i.png")
    write_records(tmp_path / "records.jsonl", records)
    config = {
        "input": str(tmp_path / "records.jsonl"),
        "results": str(tmp_path / "results"),
        "keys": {"prompt": "prompt"},
        "frames": {"fps": 2.0, "min_frames": 4, "max_frames": 6, "min_pixels": 784, "max_pixels": 448 * 448},
        "engine": {"max_model_len": 1024},
        "sampling": {"max_tokens": 2},
        **extra,
    }
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    return build_config([str(tmp_path / "my.yaml")], [])


def extract(config, tmp_path) -> list[dict]:
    settings = frames_settings(config, "0")
    extract_frames(config["input"], str(tmp_path / "m.json"), settings)
    return json.loads((tmp_path / "m.json").read_text())["records"]


def test_plan_matches_the_frames_step(tmp_path):
    config = build(tmp_path)
    # raw frames: the disk figure is exact (a compact codec's depends on the content: estimated)
    config["frames"] = {**config["frames"], "cache_codec": "npy"}
    summary = plan_build(config, progress=False)
    entries = extract(config, tmp_path)
    planned_by_frames = sum(
        item["meta"]["vision_tokens"] for e in entries if not e["error"] for item in e["videos"] + e["images"]
    )
    assert summary["vision_tokens"] == planned_by_frames
    assert summary["records"] == 6 and summary["records_errors"] == 1
    assert summary["videos"] == 9 and summary["images"] == 1
    assert [bool(e["error"]) for e in entries] == [False] * 5 + [True]
    cache_bytes = disk_usage(summary["cache_dir"])[1]
    assert abs(summary["cache_bytes"] - cache_bytes) <= 0.10 * cache_bytes, (
        summary["cache_bytes"],
        cache_bytes,
    )
    text = format_plan(summary)
    assert f"vision tokens: {planned_by_frames}\n" in text
    assert "DEFAULT" in text and "missing.mp4: missing file" in text


def test_plan_counts_the_records_a_build_would_not_send(tmp_path):
    config = build(tmp_path)
    assert plan_build(config, progress=False)["records_stored"] == 0
    extract(config, tmp_path)
    # the keys the caption job looks up, computed by the caption job's own code; two of them answered
    settings = {**caption_params(config), "frames_step": frames_settings(config, "0")}
    identity = caption_identity(caption_params_of_job(settings), model_identity(config["model"]))
    store = ResultStore(f"{config['results']}/store")
    _, pending = plan_records(config["input"], str(tmp_path / "m.json"), settings, identity, store)
    assert len(pending) == 5
    for item in pending[1:3]:  # the two- and three-video records
        store.put(item.key, {"caption": "stored", "caption_meta": {"status": "ok"}})
    summary = plan_build(config, progress=False)
    assert (summary["records_stored"], summary["records_to_send"]) == (2, 3)
    # another prompt is another answer: nothing stored for it
    other = build_config([str(tmp_path / "my.yaml")], ["prompt=Something else."])
    assert plan_build(other, progress=False)["records_stored"] == 1  # the record with its own prompt


def test_a_sample_estimates_within_its_stated_error(tmp_path):
    records = [RECORDS[i % 5] for i in range(200)]
    config = build(tmp_path, records)
    exact = plan_build(config, progress=False)
    estimate = plan_build(config, exact=50, sample=60, seed=1, progress=False)
    assert not estimate["exact"] and estimate["planned"] == 60 and estimate["records"] == 200
    for name in ("vision_tokens", "prompt_tokens", "videos", "records_to_send"):
        assert abs(estimate[name] - exact[name]) <= estimate[f"{name}_error"] * 1.5, name
    assert "95% sampling error" in format_plan(estimate)


@pytest.mark.slow
def test_two_and_three_video_records_send_their_plan_unhalved(tiny_model, tmp_path):
    """Each 448x448 clip alone plans 512 vision tokens; the record budget is 1024 - 2 - 64 = 958, so per
    video (as before) both records were halved after extraction. Now: planned to fit, sent whole, and
    vLLM's prompt tokens are exactly the plan's (and ``vidcap plan``'s)."""
    for name in ("a", "b", "c"):
        make_video(tmp_path / f"{name}.mp4", seconds=2, size="448x448", rate=4)
    write_records(
        tmp_path / "records.jsonl", [{"video": ["a.mp4", "b.mp4"]}, {"video": ["a.mp4", "b.mp4", "c.mp4"]}]
    )
    given = {
        "model": str(tiny_model),
        "input": str(tmp_path / "records.jsonl"),
        "results": str(tmp_path / "results"),
        "frames": {
            "fps": 2.0,
            "min_frames": 4,
            "max_frames": 4,
            "min_pixels": 784,
            "max_pixels": 448 * 448,
            "prompt_tokens": 64,
        },
        "engine": {
            "max_model_len": 1024,
            "dtype": "bfloat16",
            "enforce_eager": True,
            "cpu_kvcache_space_gb": 1,
        },
        "sampling": {"max_tokens": 2, "temperature": 0.0, "seed": 0},
    }
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(given))
    config = build_config([str(tmp_path / "my.yaml")], [])
    summary = plan_build(config, progress=False)
    assert summary["text_tokens_exact"]
    entries = extract(config, tmp_path)
    for entry in entries:
        assert sum(v["meta"]["vision_tokens"] for v in entry["videos"]) <= 958 < 512 * len(entry["videos"])
    llm = start_engine(str(tiny_model), config["engine"], {"video": 3, "image": 0}, 0)
    job = caption_job(config, "0")
    out = tmp_path / "out.jsonl"
    stats = caption_shard(config["input"], str(tmp_path / "m.json"), str(out), job, llm=llm)
    assert stats["halved"] == 0
    tokenizer = llm.get_tokenizer()
    sent = 0
    for line, entry in zip(out.read_text().splitlines(), entries):
        meta = json.loads(line)["caption_meta"]
        assert meta["status"] in CAPTIONED and not meta["halved"], meta
        n = len(entry["videos"])
        text = chat_template(str(tiny_model), tokenizer)("", 0, n, config["prompt"])
        text_tokens = len(tokenizer.encode(text, add_special_tokens=False)) - n
        assert meta["prompt_tokens"] == text_tokens + sum(v["meta"]["vision_tokens"] for v in entry["videos"])
        sent += meta["prompt_tokens"]
    assert summary["prompt_tokens"] == sent  # the plan's expected prompt tokens are vLLM's
    assert plan_build(config, progress=False)["records_stored"] == 2  # a rebuild would send nothing
    del llm
    gc.collect()


def test_plan_command(tmp_path, capsys):
    build(tmp_path)
    assert main(["plan", "--configfile", str(tmp_path / "my.yaml"), "--rate", "2"]) == 0
    out = capsys.readouterr().out
    assert "records: 6 (exact)" in out and "at 2 records/s per engine (given)" in out
    assert (
        main(["plan", "--configfile", str(tmp_path / "my.yaml"), "--tokens-per-second", "1000", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["records_to_send"] == 5
    assert main(["plan", "--configfile", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: No such file or directory" in capsys.readouterr().err


def test_windowed_videos_are_estimated_until_extracted(tmp_path):
    lv = {"long_video": {"mode": "auto", "window_frames": 4, "min_window_frames": 2, "shots": True}}
    config = build(tmp_path, [{"video": ["b.mp4"]}, {"video": ["a.mp4", "b.mp4"]}], **lv)
    before = plan_build(config, progress=False)
    assert (before["windowed"], before["estimated"]) == (1, 1)  # b.mp4 alone: 3 s at 2 fps, windows of 2 s
    entries = extract(config, tmp_path)
    windows = entries[0]["videos"][0]["windows"]
    after = plan_build(config, progress=False)
    assert (after["windowed"], after["estimated"]) == (1, 0)
    tokens = sum(w["meta"]["vision_tokens"] for w in windows) + sum(
        v["meta"]["vision_tokens"] for v in entries[1]["videos"]
    )
    assert after["vision_tokens"] == tokens
    assert after["requests_to_send"] == len(windows) + 1
    assert "window edges estimated" in format_plan(before)
