"""Random-weight checkpoints with a real model's architecture, checked without building 16 GB.

The published sizes are checked from their config (built with ``--config-only``), on a meta-device
model (parameter count) and through vLLM's own config and multimodal processor (vision tokens per
frame). The shard-by-shard weight writer is checked on tiny dimensions against ``save_pretrained``.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """Config, tokenizer and processor of a published size, built once per (arch, size)."""
    from vidcap.tiny_model import build_tiny_model

    built = {}

    def get(arch, size):
        if (arch, size) not in built:
            built[arch, size] = build_tiny_model(
                tmp_path_factory.mktemp(f"{arch}-{size}"), arch, size, config_only=True
            )
        return built[arch, size]

    return get


# published: Qwen2.5-VL-7B-Instruct and Qwen2-VL-7B-Instruct 8.29B parameters, Qwen3-VL-8B-Instruct 8.77B
@pytest.mark.parametrize(
    "arch,size,text,vision,billions",
    [
        (
            "qwen2_5_vl",
            "7b",
            {"hidden_size": 3584, "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064},
            {
                "depth": 32,
                "hidden_size": 1280,
                "out_hidden_size": 3584,
                "fullatt_block_indexes": [7, 15, 23, 31],
            },
            8.29,
        ),
        (
            "qwen2_vl",
            "7b",
            {"hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944},
            {"depth": 32, "embed_dim": 1280, "hidden_size": 3584},
            8.29,
        ),
        (
            "qwen3_vl",
            "8b",
            {"hidden_size": 4096, "num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128},
            {
                "depth": 27,
                "hidden_size": 1152,
                "out_hidden_size": 4096,
                "deepstack_visual_indexes": [8, 16, 24],
            },
            8.77,
        ),
    ],
)
def test_published_dimensions(config_only, arch, size, text, vision, billions):
    import torch
    from transformers import AutoConfig

    from vidcap.tiny_model import _classes

    out = config_only(arch, size)
    written = json.loads((out / "config.json").read_text())
    assert {k: written["text_config"][k] for k in text} == text
    assert {k: written["vision_config"][k] for k in vision} == vision
    assert written["dtype"] == "bfloat16" and not list(out.glob("*.safetensors"))
    with torch.device("meta"):
        model = _classes(arch)[1](AutoConfig.from_pretrained(out))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_vllm_reads_the_7b_config(config_only):
    """vLLM's own processor for the 7B: a 448x252 frame pair is 16 x 9 = 144 vision tokens."""
    import numpy as np
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    config = ModelConfig(model=str(config_only("qwen2_5_vl", "7b")), dtype="bfloat16", max_model_len=8192)
    assert config.hf_config.vision_config.depth == 32 and config.get_hidden_size() == 3584
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    frames = np.zeros((32, 252, 448, 3), dtype=np.uint8)
    meta = {
        "fps": 2.0,
        "duration": 16.0,
        "total_num_frames": 32,
        "frames_indices": list(range(32)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    items = processor.info.parse_mm_data({"video": (frames, meta)})
    result = processor("<|vision_start|><|video_pad|><|vision_end|>", items)
    assert result["prompt_token_ids"].count(config.hf_config.video_token_id) == 16 * 144


def test_unknown_size_is_refused(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidcap",
            "tiny-model",
            str(tmp_path / "m"),
            "--arch",
            "qwen3_vl",
            "--size",
            "7b",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 2 and "choose one of tiny, 8b" in run.stderr


def test_streamed_weights_match_save_pretrained(tiny_model_25, tmp_path):
    """Shard-by-shard random weights: save_pretrained's names and shapes, loadable by transformers."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from vidcap.tiny_model import write_random_weights

    out = tmp_path / "streamed"
    shutil.copytree(tiny_model_25, out, ignore=shutil.ignore_patterns("*.safetensors"))
    config = AutoConfig.from_pretrained(out)
    paths = write_random_weights(Qwen2_5_VLForConditionalGeneration, config, out, shard_bytes=200_000)
    assert len(paths) > 3  # really sharded
    with safe_open(str(tiny_model_25 / "model.safetensors"), "pt") as reference:
        expected = {k: tuple(reference.get_slice(k).get_shape()) for k in reference.keys()}  # noqa: SIM118 -- safe_open is not iterable
    got, dtypes = {}, set()
    for path in paths:
        with safe_open(str(path), "pt") as shard:
            got.update({k: tuple(shard.get_slice(k).get_shape()) for k in shard.keys()})  # noqa: SIM118
            dtypes.update(shard.get_slice(k).get_dtype() for k in shard.keys())  # noqa: SIM118
    assert dtypes == {"BF16"}
    assert got == expected
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    norm = model.model.language_model.layers[0].input_layernorm.weight
    assert torch.all(norm == 1)  # norms start at one, projections random
    assert model.lm_head.weight.float().std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.slow
def test_vllm_generates_from_streamed_weights(tiny_model_25, tmp_path):
    """The sharded format a 7B build writes is what vLLM loads (here with tiny dimensions, on the CPU)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration
    from vllm import SamplingParams

    from vidcap.engine import start_engine
    from vidcap.tiny_model import write_random_weights

    out = tmp_path / "streamed"
    shutil.copytree(tiny_model_25, out, ignore=shutil.ignore_patterns("*.safetensors"))
    write_random_weights(
        Qwen2_5_VLForConditionalGeneration, AutoConfig.from_pretrained(out), out, shard_bytes=500_000
    )
    engine = {
        "max_model_len": 256,
        "dtype": "bfloat16",
        "enforce_eager": True,
        "cpu_kvcache_space_gb": 1,
    }
    llm = start_engine(str(out), engine, {"video": 0, "image": 0}, 0)
    params = SamplingParams(max_tokens=6, min_tokens=6, ignore_eos=True, temperature=0.0)
    outputs = llm.generate(["a video of a dog"], params, use_tqdm=False)
    assert len(outputs[0].outputs[0].token_ids) == 6
