"""Video metadata reaches vLLM's Qwen-VL processors so that temporal positions are right.

Runs vLLM's own multimodal processor (no engine) on frames sampled by the frames step from a clip
with a known frame rate, and checks the model input it builds: Qwen2.5-VL's ``second_per_grid_ts``
(seconds per temporal token group, which scales the temporal rope) and the video token count.
"""

import os

import pytest
from helpers import make_video

from vidcap.frames import sample_video
from vidcap.prompts import kept_frames, video_item, vision_tokens

VIDEO_PROMPT = "<|vision_start|><|video_pad|><|vision_end|>Describe."


@pytest.fixture(scope="module")
def processor_25(tiny_model_25):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    config = ModelConfig(model=str(tiny_model_25), dtype="float32", max_model_len=4096)
    return MULTIMODAL_REGISTRY.create_processor(config)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 s at 8 fps (32 frames) sampled at 2 fps: 8 frames, one every 0.5 s."""
    path = make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=4, size="112x112", rate=8)
    frames, meta = sample_video(
        str(path), {"fps": 2.0, "min_frames": 4, "max_frames": 64, "min_pixels": 3136, "max_pixels": 12544}
    )
    npy = tmp_path_factory.mktemp("frames") / "clip.npy"
    import numpy as np

    np.save(npy, frames)
    return {"path": str(path), "frames": str(npy), "meta": meta}


def model_input(processor, item):
    items = processor.info.parse_mm_data({"video": item})
    out = processor(VIDEO_PROMPT, items)
    video = out["mm_kwargs"]["video"][0]
    n_video_tokens = out["prompt_token_ids"].count(processor.info.get_hf_config().video_token_id)
    return {key: elem.data for key, elem in video.items()}, n_video_tokens


def test_metadata_describes_the_source_video(clip):
    meta = clip["meta"]
    assert meta["total_num_frames"] == 32 and meta["fps"] == pytest.approx(8.0)
    assert len(meta["frames_indices"]) == 8
    frames, metadata = video_item(clip)
    assert frames.shape[0] == 8
    assert metadata["fps"] == pytest.approx(8.0)  # source fps, not the sampling rate
    assert metadata["frames_indices"] == meta["frames_indices"]
    assert metadata["do_sample_frames"] is False


def test_qwen25_temporal_step_matches_sampling_rate(processor_25, clip):
    data, n_tokens = model_input(processor_25, video_item(clip))
    grid_t, grid_h, grid_w = data["video_grid_thw"].tolist()
    assert grid_t == 4  # 8 frames in temporal pairs
    # 2 frames per group sampled at 2 fps: each temporal position step is 1 second
    assert float(data["second_per_grid_ts"]) == pytest.approx(1.0)
    assert n_tokens == grid_t * grid_h * grid_w // 4 == vision_tokens({"videos": [clip], "images": []})


def test_qwen25_half_the_frames_doubles_the_step(processor_25, clip):
    keep = kept_frames(8, 4)
    frames, metadata = video_item(clip, keep)
    assert frames.shape[0] == 4 and len(metadata["frames_indices"]) == 4
    data, n_tokens = model_input(processor_25, (frames, metadata))
    assert data["video_grid_thw"].tolist()[0] == 2
    # 4 frames over the same 4 s: 1 fps, so each pair spans 2 s; time positions keep their meaning
    assert float(data["second_per_grid_ts"]) == pytest.approx(2.0)
    assert n_tokens == vision_tokens({"videos": [clip], "images": []}, [keep])


def test_sampled_rate_as_fps_would_be_wrong(processor_25, clip):
    """The classic mistake (fps = the sampling rate with the source frame count) changes the model input."""
    frames, metadata = video_item(clip)
    data, _ = model_input(processor_25, (frames, {**metadata, "fps": 2.0}))
    assert float(data["second_per_grid_ts"]) != pytest.approx(1.0)


def test_kept_frames_are_even_and_spread():
    assert kept_frames(8, 4) == [0, 2, 5, 7]
    assert kept_frames(10, 5) == [0, 3, 6, 9]  # rounded down to an even count
    assert kept_frames(4, 1) == [0, 3]  # never below one temporal pair


def build_tiny_qwen3_vl_processor(out, tokenizer_dir):
    """Config and processor of a tiny Qwen3-VL (no weights: vLLM's processor does not need them)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in (
            "<|endoftext|>",
            "<|im_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        )
    }
    text = dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=65536,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [8, 12, 12],
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        out_hidden_size=128,
        intermediate_size=128,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        deepstack_visual_indexes=[1],
    )
    Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    ).save_pretrained(out)
    Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16),
        video_processor=Qwen3VLVideoProcessor(
            patch_size=16, size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 128}
        ),
        tokenizer=tok,
        chat_template=tok.chat_template,
    ).save_pretrained(out)
    return out


def test_qwen3_vl_time_stamps_follow_the_source_frames(tiny_model_25, clip, tmp_path):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from vidcap.budget import geometry_for as vision_geometry

    model = build_tiny_qwen3_vl_processor(tmp_path / "qwen3", tiny_model_25)
    processor = MULTIMODAL_REGISTRY.create_processor(
        ModelConfig(model=str(model), dtype="float32", max_model_len=4096)
    )
    data, n_tokens = model_input(processor, video_item(clip))
    indices = clip["meta"]["frames_indices"]  # [0, 4, 9, 13, 18, 22, 27, 31] at 8 fps
    expected = [(indices[i] + indices[i + 1]) / 2 / 8.0 for i in range(0, 8, 2)]
    assert list(data["timestamps"]) == pytest.approx(expected)  # mid-time of each frame pair, in seconds
    geometry = vision_geometry(str(model))
    assert geometry.factor == 32 and geometry.tokens_per_frame_group > 0
    assert (
        n_tokens
        == vision_tokens({"videos": [clip], "images": []}, None, geometry)
        - 4 * geometry.tokens_per_frame_group
    )  # 112 px frames become 4x4 patches of 32 px


@pytest.mark.slow
def test_qwen3_vl_captions_through_vllm(tiny_model_25, clip, tmp_path):
    """A tiny random Qwen3-VL (weights too) captions video, image + video and image-only records."""
    import torch
    from helpers import write_records
    from PIL import Image
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    from vidcap.caption import caption_shard
    from vidcap.frames import extract_frames

    model = build_tiny_qwen3_vl_processor(tmp_path / "qwen3", tiny_model_25)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model)
    weights = Qwen3VLForConditionalGeneration(config).eval()
    weights.generation_config.eos_token_id = config.text_config.eos_token_id
    weights.save_pretrained(model)

    Image.new("RGB", (112, 84), (10, 200, 90)).save(tmp_path / "g.png")
    records = [{"video": clip["path"]}, {"image": "g.png", "video": clip["path"]}, {"image": "g.png"}]
    write_records(tmp_path / "s.jsonl", records)
    # sized for Qwen3-VL's 32-pixel patches, as the workflow does (frames.patch_factor from the model)
    frames = {
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 8,
        "min_pixels": 4096,
        "max_pixels": 16384,
        "patch_factor": 32,
    }
    extract_frames(
        str(tmp_path / "s.jsonl"),
        str(tmp_path / "m.json"),
        {"keys": {}, "frames": frames, "cache_dir": str(tmp_path / "cache"), "media_root": str(tmp_path)},
    )
    settings = {
        "model": str(model),
        "prompt": "Describe.",
        "system_prompt": "",
        "keys": {},
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 4, "seed": 0},
        "engine": {
            "max_model_len": 2048,
            "dtype": "bfloat16",
            "enforce_eager": True,
            "cpu_kvcache_space_gb": 1,
        },
    }
    stats = caption_shard(
        str(tmp_path / "s.jsonl"), str(tmp_path / "m.json"), str(tmp_path / "out.jsonl"), settings
    )
    import json

    metas = [json.loads(line)["caption_meta"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(m["status"] != "error" for m in metas), metas
    assert stats["ok"] + stats["truncated"] + stats["degenerate"] == 3
    # video (4 groups of 16 tokens plus time stamps) vs image only (12 tokens + 2 markers)
    assert metas[0]["prompt_tokens"] - metas[2]["prompt_tokens"] > 4 * 16 - 14
    assert metas[1]["prompt_tokens"] - metas[0]["prompt_tokens"] == 12 + 2  # the image came along
