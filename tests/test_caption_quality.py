"""Candidates, the degeneration guard and structured captions on a real vLLM engine (CPU build).

The tiny random-weight Qwen2.5-VL model writes gibberish, so the tests check structure (how many
candidates, which one was kept, attempts and seeds, that JSON parses and matches its schema) and
reproducibility, never wording.
"""

import gc
import json

import jsonschema
import pytest
from helpers import CAPTIONED, make_video, write_records

from vidcap.caption import caption_shard
from vidcap.config import defaults
from vidcap.engine import start_engine
from vidcap.frames import extract_frames
from vidcap.structured import load_schema

pytestmark = pytest.mark.slow

ENGINE = {
    **defaults("engine"),
    "max_model_len": 4096,
    "dtype": "bfloat16",
    "enforce_eager": True,
    "cpu_kvcache_space_gb": 1,
}
FRAMES = {**defaults("frames"), "fps": 2.0, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544}


@pytest.fixture(scope="module")
def llm(tiny_model_25):
    engine = start_engine(str(tiny_model_25), ENGINE, {"video": 1, "image": 0}, 0)
    yield engine
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    make_video(root / "a.mp4", seconds=2, size="112x112", rate=8)
    make_video(root / "b.mp4", seconds=2, size="112x112", rate=8, source="mandelbrot")
    records = [
        {"video": v, "conversation": [{"from": "human", "value": ""}]} for v in ("a.mp4", "b.mp4", "a.mp4")
    ]
    records[2]["note"] = "same video and prompt, other record: one request, answered once (vidcap.store)"
    shard = write_records(root / "shard.jsonl", records)
    manifest = root / "manifest.json"
    extract_frames(
        str(shard),
        str(manifest),
        {"keys": {}, "frames": FRAMES, "cache_dir": str(root / "cache"), "media_root": str(root)},
    )
    return shard, manifest


def run(llm, model, shard, out, **settings):
    base = {
        "model": str(model),
        "prompt": "Describe the video.",
        "system_prompt": "",
        "keys": {},
        "engine": ENGINE,
        "frames": FRAMES,
        "sampling": {**defaults("sampling"), "temperature": 0.8, "max_tokens": 12, "seed": 0},
    }
    for section, values in settings.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    stats = caption_shard(str(shard[0]), str(shard[1]), str(out), base, llm=llm)
    return [json.loads(line) for line in out.read_text().splitlines()], stats


def test_three_candidates_from_one_request_kept_all_or_by_consensus(llm, tiny_model_25, shard, tmp_path):
    every, stats = run(llm, tiny_model_25, shard, tmp_path / "all.jsonl", candidates={"n": 3, "keep": "all"})
    # one request per distinct request, not per candidate: the two a.mp4 records share theirs
    assert stats["requests"] == 2
    for result in every:
        meta = result["caption_meta"]
        assert meta["status"] in CAPTIONED and meta["attempts"] == 1
        assert len(result["captions"]) == 3 and result["caption"] in result["captions"]
    assert every[2]["captions"] == every[0]["captions"] != every[1]["captions"]

    again, _ = run(llm, tiny_model_25, shard, tmp_path / "again.jsonl", candidates={"n": 3, "keep": "all"})
    assert (tmp_path / "all.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()

    chosen, _ = run(
        llm, tiny_model_25, shard, tmp_path / "mbr.jsonl", candidates={"n": 3, "keep": "consensus"}
    )
    for result, full in zip(chosen, every):
        index = result["caption_meta"]["chosen"]
        assert result["caption"] == full["captions"][index]  # the same seeds gave the same three
        assert "captions" not in result


def test_degenerate_captions_are_sampled_again_then_labelled(llm, tiny_model_25, shard, tmp_path):
    plain, _ = run(llm, tiny_model_25, shard, tmp_path / "plain.jsonl")
    assert all(r["caption_meta"]["attempts"] == 1 for r in plain)

    # no caption of 12 tokens has 1,000 words: every attempt is degenerate
    forced = {"retries": 2, "min_words": 1000}
    results, stats = run(llm, tiny_model_25, shard, tmp_path / "forced.jsonl", quality=forced)
    for result in results:
        meta = result["caption_meta"]
        assert meta["status"] == "degenerate" and meta["attempts"] == 3
        assert [r["attempt"] for r in meta["rejected"]] == [0, 1, 2]
        assert all(r["reason"].startswith(("too short", "empty")) for r in meta["rejected"])
        seeds = [r["seed"] for r in meta["rejected"]]
        assert len(set(seeds)) == 3 and seeds[0] == meta["seed"]  # a new seed per attempt
        assert isinstance(result["caption"], str)  # the best attempt is kept
    assert stats["degenerate"] == 3 and stats["retries"] == 4 and stats["requests"] == 6  # 2 distinct

    again, _ = run(llm, tiny_model_25, shard, tmp_path / "forced2.jsonl", quality=forced)
    assert (tmp_path / "forced.jsonl").read_bytes() == (tmp_path / "forced2.jsonl").read_bytes()


def test_json_captions_parse_and_match_the_schema(llm, tiny_model_25, shard, tmp_path):
    results, _ = run(
        llm,
        tiny_model_25,
        shard,
        tmp_path / "json.jsonl",
        output_format="json",
        sampling={"max_tokens": 3000},
    )
    for result in results:
        meta = result["caption_meta"]
        assert meta["status"] in ("ok", "degenerate"), meta
        jsonschema.validate(result["caption_json"], load_schema(None))
        assert result["caption"] == result["caption_json"]["summary"]
        for event in result["caption_json"]["events"]:
            assert 0 <= event["start"] <= event["end"] <= 2.0 + 1e-6
