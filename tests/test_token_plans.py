"""Token-exact plans: the vision tokens vidcap plans for a video are the tokens the model sees.

The frames step sizes every frame (multiples of the model's patch factor, within its pixel budget), and the
caption job tells vLLM's processor not to resize them again, so the prompt vLLM reports equals vidcap's own
count, for all three families: Qwen2-VL and Qwen2.5-VL (28-pixel patches) and Qwen3-VL (32-pixel patches,
plus its per-group time-stamp text). The tiny checkpoints' processors cap frames at 112x112: without the
no-resize request they would shrink these 224-pixel frames and the counts would differ.
"""

import gc
import json

import pytest
from helpers import CAPTIONED, make_video, write_records

from vidcap.budget import geometry_for
from vidcap.caption import caption_shard
from vidcap.config import defaults
from vidcap.engine import start_engine
from vidcap.frames import extract_frames
from vidcap.prompts import chat_template, vision_tokens

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["tiny_model", "tiny_model_25", "tiny_model_3"])
def test_planned_vision_tokens_are_what_vllm_counts(family, request, tmp_path):
    model = str(request.getfixturevalue(family))
    geometry = geometry_for(model)
    side = 7 * geometry.factor  # 196 (Qwen2/2.5) or 224 (Qwen3) pixels: larger than the tiny processors allow
    make_video(tmp_path / "v.mp4", seconds=2, size=f"{side}x{side}", rate=4)
    shard = write_records(tmp_path / "s.jsonl", [{"video": ["v.mp4"]}])
    frames = {
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 4,
        "min_pixels": side * side,
        "max_pixels": side * side,
        "patch_factor": geometry.factor,
    }
    settings = {
        "keys": {},
        "frames": frames,
        "cache_dir": str(tmp_path / "cache"),
        "media_root": str(tmp_path),
    }
    extract_frames(str(shard), str(tmp_path / "m.json"), settings)
    entry = json.loads((tmp_path / "m.json").read_text())["records"][0]
    video = entry["videos"][0]["meta"]
    assert (video["width"], video["height"]) == (side, side)
    assert video["vision_tokens"] == 2 * 7 * 7  # 4 frames = 2 temporal pairs of 7 x 7 tokens

    engine = {
        **defaults("engine"),
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "enforce_eager": True,
        "cpu_kvcache_space_gb": 1,
    }
    llm = start_engine(model, engine, {"video": 1, "image": 0}, 0)
    job = {
        "model": model,
        "prompt": "Describe.",
        "system_prompt": "",
        "keys": {},
        "engine": engine,
        "frames": frames,
        "sampling": {"temperature": 0.0, "max_tokens": 2, "seed": 0},
    }
    caption_shard(str(shard), str(tmp_path / "m.json"), str(tmp_path / "out.jsonl"), job, llm=llm)
    meta = json.loads((tmp_path / "out.jsonl").read_text())["caption_meta"]
    assert meta["status"] in CAPTIONED, meta

    tokenizer = llm.get_tokenizer()
    text = chat_template(model, tokenizer)("", 0, 1, "Describe.")
    text_tokens = len(tokenizer.encode(text, add_special_tokens=False)) - 1  # less the placeholder
    geometry = geometry_for(model, llm.llm_engine.model_config.hf_config)
    stamps = lambda t: len(tokenizer.encode(f"<{t:.1f} seconds>", add_special_tokens=False))  # noqa: E731
    planned = vision_tokens(entry, None, geometry, stamps)
    assert meta["prompt_tokens"] == text_tokens + planned, (meta["prompt_tokens"], text_tokens, planned)
    if geometry.tokens_per_frame_group == 0:  # Qwen2/2.5-VL: the plan's own count is the whole vision part
        assert meta["prompt_tokens"] - text_tokens == video["vision_tokens"]
    del llm
    gc.collect()
