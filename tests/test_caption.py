"""vidcap.caption on a real vLLM engine (CPU build) with the tiny random Qwen2.5-VL model.

One engine for the whole module (max_model_len 256, so prompt budgets are easy to exceed with tiny
clips). Captions are gibberish; the tests check statuses, token counts, frames sent and
reproducibility, never wording.
"""

import json
import shutil

import pytest
from helpers import CAPTIONED, make_video, write_records

from vidcap.backends import OfflineBackend
from vidcap.caption import caption_shard, feed
from vidcap.config import defaults
from vidcap.engine import start_engine
from vidcap.frames import extract_frames
from vidcap.judge import Judge
from vidcap.prompts import Pending
from vidcap.store import ResultStore

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 256
ENGINE = {
    **defaults("engine"),
    "max_model_len": MAX_MODEL_LEN,
    "dtype": "bfloat16",
    "enforce_eager": True,
    "cpu_kvcache_space_gb": 1,
}
FRAMES = {
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 64,
    "min_pixels": 3136,
    "max_pixels": 12544,
    "image_min_pixels": 3136,
    "image_max_pixels": 12544,
}


@pytest.fixture(scope="module")
def llm(tiny_model_25):
    return start_engine(str(tiny_model_25), ENGINE, {"video": 2, "image": 2}, 0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make_video(root / "short.mp4", seconds=1, size="112x112", rate=8)  # 4 frames: 2 x 16 vision tokens
    make_video(root / "long.mp4", seconds=4, size="112x112", rate=16)  # at 8 fps: 32 frames, 256 tokens
    make_video(root / "long2.mp4", seconds=4, size="112x112", rate=16, source="mandelbrot")
    from PIL import Image

    Image.new("RGB", (112, 112), (200, 30, 30)).save(root / "red.png")
    Image.new("RGB", (112, 84), (30, 30, 200)).save(root / "blue.png")
    return root


def settings_for(model, **sampling):
    return {
        "model": str(model),
        "prompt": "Describe the video.",
        "system_prompt": "You are a helpful assistant.",
        "keys": {"prompt": "question"},
        "engine": ENGINE,
        "frames": FRAMES,
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 0, **sampling},
    }


def build_shard(tmp_path, media, records, frames=FRAMES):
    shard = write_records(tmp_path / "shard.jsonl", records)
    manifest = tmp_path / "manifest.json"
    extract_frames(
        str(shard),
        str(manifest),
        {"keys": {}, "frames": frames, "cache_dir": str(tmp_path / "cache"), "media_root": str(media)},
    )
    return shard, manifest


def run(llm, model, shard, manifest, out, **sampling):
    stats = caption_shard(str(shard), str(manifest), str(out), settings_for(model, **sampling), llm=llm)
    return [json.loads(line) for line in out.read_text().splitlines()], stats


def conversation(**extra):
    return {"conversation": [{"from": "human", "value": ""}], **extra}


def test_statuses_media_mixes_and_too_long(llm, tiny_model_25, media, tmp_path):
    records = [
        conversation(video="short.mp4"),
        conversation(video="long.mp4"),  # 256 vision tokens > 248 budget: halved to 16 frames
        conversation(video=["long.mp4", "long2.mp4"]),  # even halved (256 tokens) too long
        conversation(image="red.png", video="short.mp4"),  # image first, then video
        conversation(image=["red.png", "blue.png"]),  # image-only, two images
        conversation(video="missing.mp4"),  # carried from the frames step
        conversation(video="short.mp4", question="What colour dominates?"),  # per-record prompt
    ]
    shard, manifest = build_shard(tmp_path, media, records, {**FRAMES, "fps": 8.0})
    results, stats = run(llm, tiny_model_25, shard, manifest, tmp_path / "out.jsonl")
    metas = [r["caption_meta"] for r in results]

    for i in (0, 1, 3, 4, 6):
        assert metas[i]["status"] in CAPTIONED, metas[i]
        assert isinstance(results[i]["caption"], str) and metas[i]["output_tokens"] >= 1
        assert metas[i]["finish_reason"] in ("stop", "length")
        assert metas[i]["prompt_tokens"] + 8 <= MAX_MODEL_LEN
    assert metas[1]["halved"] is True and metas[1]["frames"] == 16  # 32 sampled, half sent
    assert metas[0]["halved"] is False and metas[0]["frames"] == 8
    assert metas[2]["status"] == "error" and metas[2]["error"].startswith("too long")
    assert "half the frames" in metas[2]["error"] and results[2]["caption"] is None
    assert metas[5]["status"] == "error" and "missing file" in metas[5]["error"]
    # vision tokens per record: the prompt lengths tell that every medium reached the model
    base = metas[0]["prompt_tokens"]
    assert metas[3]["prompt_tokens"] == base + 16 + 2  # + one 112x112 image and its two markers
    assert metas[4]["prompt_tokens"] == base - (4 * 16 + 2) + (16 + 2) + (
        12 + 2
    )  # no video; 112x112 + 112x84
    assert metas[6]["prompt_tokens"] != base  # the per-record prompt replaced the default
    assert (
        stats["records"] == 7
        and stats["error"] == 2
        and stats["ok"] + stats["truncated"] + stats["degenerate"] == 5
    )
    assert stats["halved"] == 1
    assert stats["output_tokens"] == sum(m["output_tokens"] or 0 for m in metas)
    assert stats["provenance"]["model"] == str(tiny_model_25)
    assert stats["provenance"]["versions"]["vllm"].startswith("vllm")


def test_truncated_when_max_tokens_is_reached(llm, tiny_model_25, media, tmp_path):
    shard, manifest = build_shard(tmp_path, media, [conversation(video="short.mp4")])
    results, _ = run(llm, tiny_model_25, shard, manifest, tmp_path / "out.jsonl", max_tokens=2)
    meta = results[0]["caption_meta"]
    assert meta["output_tokens"] <= 2
    # two random tokens may also be no word at all: the degeneration label then wins over truncated/ok
    if meta["status"] == "degenerate":
        assert meta["rejected"][0]["reason"] and meta["finish_reason"] in ("length", "stop")
    else:
        assert (meta["status"], meta["finish_reason"]) in (("truncated", "length"), ("ok", "stop"))
    if meta["output_tokens"] == 2:
        assert meta["finish_reason"] == "length" and meta["status"] in ("truncated", "degenerate")


def test_engine_rejections_are_isolated_per_request(llm, tiny_model_25, tmp_path):
    """vLLM refuses the middle request while it is added: only that record fails, the others are captioned."""
    no_media = {"videos": [], "images": []}
    items = [
        Pending(i, f"d{i}", no_media, "", text=text, key=f"k{i}")
        for i, text in enumerate(["a the video", "a the " * 400, "red blue green"])
    ]
    results = [{"caption": None, "caption_meta": {"error": None}} for _ in items]
    stats = {"requests": 0, "halved": 0, "prompt_tokens": 0, "output_tokens": 0, "retries": 0}
    sampling = {**defaults("sampling"), "temperature": 0.0, "max_tokens": 2}
    backend = OfflineBackend(llm, sampling, ENGINE)
    judge = Judge(
        {"quality": defaults("quality"), "candidates": defaults("candidates"), "sampling": sampling}
    )
    feed(backend, items, results, stats, ResultStore(tmp_path / "store"), None, judge)
    assert {results[0]["caption_meta"]["status"], results[2]["caption_meta"]["status"]} <= set(CAPTIONED)
    assert results[1]["caption"] is None and results[1]["caption_meta"]["error"].startswith("too long")
    assert stats["requests"] == 3


def test_same_seed_same_bytes(llm, tiny_model_25, media, tmp_path):
    records = [conversation(video="short.mp4"), conversation(video="long.mp4"), conversation(image="red.png")]
    shard, manifest = build_shard(tmp_path, media, records)
    sampled = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "seed": 0}
    first, _ = run(llm, tiny_model_25, shard, manifest, tmp_path / "a.jsonl", **sampled)
    run(llm, tiny_model_25, shard, manifest, tmp_path / "b.jsonl", **sampled)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()

    # a record sampled in another batch (another shard, other neighbours) gets the same caption
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copytree(tmp_path / "cache", alone / "cache")
    shard2, manifest2 = build_shard(alone, media, [records[1]])
    moved, _ = run(llm, tiny_model_25, shard2, manifest2, alone / "c.jsonl", **sampled)
    assert moved[0] == first[1]

    other, _ = run(llm, tiny_model_25, shard, manifest, tmp_path / "d.jsonl", **{**sampled, "seed": 1})
    assert [r["caption"] for r in other] != [r["caption"] for r in first]


def test_temperature_zero_is_greedy(llm, tiny_model_25, media, tmp_path):
    shard, manifest = build_shard(
        tmp_path, media, [conversation(video="short.mp4"), conversation(image="red.png")]
    )
    a, _ = run(llm, tiny_model_25, shard, manifest, tmp_path / "a.jsonl", seed=0)
    b, _ = run(llm, tiny_model_25, shard, manifest, tmp_path / "b.jsonl", seed=12345)
    assert [r["caption"] for r in a] == [r["caption"] for r in b]


def test_engine_too_long_retries_with_half_the_frames(llm, tiny_model_25, media, tmp_path):
    """When vidcap's own estimate lets a prompt through that the engine rejects, the retry still halves."""
    shard, manifest = build_shard(
        tmp_path,
        media,
        [conversation(video="long.mp4"), conversation(video="short.mp4")],
        {**FRAMES, "fps": 8.0},
    )
    settings = settings_for(tiny_model_25)
    settings["engine"] = {**ENGINE, "max_model_len": 1024}  # the estimate believes in more room than there is
    caption_shard(str(shard), str(manifest), str(tmp_path / "out.jsonl"), settings, llm=llm)
    metas = [json.loads(line)["caption_meta"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert metas[0]["status"] != "error" and metas[0]["halved"] is True and metas[0]["frames"] == 16
    assert metas[1]["status"] != "error" and metas[1]["halved"] is False


def test_a_fresh_engine_rebuilds_the_same_bytes(llm, tiny_model_25, media, tmp_path):
    """Two builds: this module's engine and a new one started by caption_shard itself (as a job does)."""
    shard, manifest = build_shard(
        tmp_path, media, [conversation(video="short.mp4"), conversation(image="red.png")]
    )
    sampled = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "seed": 7}
    run(llm, tiny_model_25, shard, manifest, tmp_path / "a.jsonl", **sampled)
    stats = caption_shard(
        str(shard), str(manifest), str(tmp_path / "b.jsonl"), settings_for(tiny_model_25, **sampled)
    )
    assert stats["engine_seconds"] > 0  # it did start its own engine
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
