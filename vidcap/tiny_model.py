"""Random-weight Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints, built entirely offline.

``size="tiny"`` (the default): a few MB, used by the demo and the tests; the real vLLM code path runs
on it in seconds on a CPU. The other sizes have the published architecture of a real checkpoint
(:data:`PUBLISHED`, from its config.json), so GPU throughput can be measured without downloading
weights: speed depends on the shapes, not on the values. Their weights are written tensor by tensor
into safetensors shards, so building an 8B model needs memory for one shard, not for the model.
Either way the captions are gibberish by design; only their structure means anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidcap.budget import QWEN2_PATCH_FACTOR

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template (vision placeholders per content item)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# frames the tiny processor accepts unchanged: 56x56 .. 112x112, so vision tokens stay few
_F = QWEN2_PATCH_FACTOR
TINY_MIN_PIXELS, TINY_MAX_PIXELS = _F * _F * 4, _F * _F * 16
ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2_5_omni")
# Qwen2.5-Omni's own placeholder tokens, named as its processor looks them up on the tokenizer
OMNI_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
# Qwen2.5-Omni's chat template for the media vidcap sends (a video with its own audio track: the processor
# expands <|VIDEO|> into 2-second chunks of video then audio tokens between <|audio_bos|> and <|audio_eos|>)
OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Dimensions from the published config.json (and preprocessor configs) of each checkpoint. The
# tokenizer stays the tiny one: its token ids sit below the real vocab_size, and the embedding and
# output matrices keep their real size, which is what costs time.
# fmt: off
_QWEN2_TEXT_7B = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
PUBLISHED = {
    ("qwen2_vl", "7b"): {
        "source": "Qwen/Qwen2-VL-7B-Instruct",
        "text": {**_QWEN2_TEXT_7B, "max_position_embeddings": 32768},
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "pixels": {"min_pixels": 3136, "max_pixels": 12845056},
    },
    ("qwen2_5_vl", "7b"): {
        "source": "Qwen/Qwen2.5-VL-7B-Instruct",
        "text": {**_QWEN2_TEXT_7B, "max_position_embeddings": 128000},
        "vision": {"depth": 32, "hidden_size": 1280, "out_hidden_size": 3584, "intermediate_size": 3420,
                   "num_heads": 16, "hidden_act": "silu", "patch_size": 14, "spatial_merge_size": 2,
                   "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                   "tokens_per_second": 2},
        "pixels": {"min_pixels": 3136, "max_pixels": 12845056},
    },
    ("qwen3_vl", "8b"): {
        "source": "Qwen/Qwen3-VL-8B-Instruct",
        "text": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                 "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                     "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                   "out_hidden_size": 4096, "hidden_act": "gelu_pytorch_tanh", "patch_size": 16,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                   "deepstack_visual_indexes": [8, 16, 24]},
        "pixels": {"image": {"shortest_edge": 65536, "longest_edge": 16777216},
                   "video": {"shortest_edge": 4096, "longest_edge": 25165824}},
    },
}
# Qwen2.5-Omni-7B's thinker: transformers' Qwen2_5Omni*Config defaults, documented as that checkpoint's; its
# feature extractor (Whisper's, 128 mel bins) reads up to chunk_length seconds of audio per item
PUBLISHED[("qwen2_5_omni", "7b")] = {
    "source": "Qwen/Qwen2.5-Omni-7B",
    "text": {**_QWEN2_TEXT_7B, "max_position_embeddings": 32768},
    "vision": {"depth": 32, "hidden_size": 1280, "out_hidden_size": 3584, "intermediate_size": 3420,
               "num_heads": 16, "hidden_act": "silu", "patch_size": 14, "spatial_merge_size": 2,
               "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    "audio": {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20,
              "encoder_ffn_dim": 5120, "d_model": 1280, "output_dim": 3584, "max_source_positions": 1500,
              "n_window": 100},
    "pixels": {"min_pixels": 3136, "max_pixels": 12845056},
    "chunk_length": 300,
}
TINY_TEXT = {
    "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1,  # head_dim 64, which vLLM's CPU attention supports
    "max_position_embeddings": 65536, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
}
TINY = {
    "qwen2_vl": {
        "vision": {"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 2,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    },
    "qwen2_5_vl": {
        "vision": {"depth": 2, "hidden_size": 64, "out_hidden_size": 128, "intermediate_size": 128,
                   "num_heads": 2,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                   "fullatt_block_indexes": [1]},
    },
    "qwen2_5_omni": {
        "vision": {"depth": 2, "hidden_size": 64, "out_hidden_size": 128, "intermediate_size": 128,
                   "num_heads": 2,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                   "fullatt_block_indexes": [1]},
        "audio": {"num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                  "d_model": 64, "output_dim": 128, "max_source_positions": 1500, "n_window": 100},
        "chunk_length": 300,
    },
    "qwen3_vl": {
        "text": {"head_dim": 64,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 2, "hidden_size": 64, "out_hidden_size": 128, "intermediate_size": 128,
                   "num_heads": 2,
                   "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                   "num_position_embeddings": 64, "deepstack_visual_indexes": [1]},
        "pixels": {"image": {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16},
                   "video": {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 128}},
    },
}
WORDS = ("a the video shows person man woman dog cat car street room kitchen walking running sitting holding "  # noqa: SIM905
         "opening closing red blue green small large frame scene camera moves describe what happens in this "
         "clip is are and of to with on at").split()
# fmt: on


def bpe_state() -> dict:
    """A byte-level BPE (vocab 480) trained on a synthetic caption corpus: its vocab and merges."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    generator = torch.Generator().manual_seed(0)
    corpus = [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (12,), generator=generator).tolist()) + "."
        for _ in range(2000)
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    return json.loads(bpe.to_str())["model"]


def _train_tokenizer(named_tokens: dict | None = None):
    """The tiny byte-level BPE tokenizer; ``named_tokens`` ({"audio_token": "<|AUDIO|>", ...}) adds a model's
    own special tokens, named as its processor looks them up."""
    from transformers import Qwen2Tokenizer

    state = bpe_state()
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        errors="replace",
        extra_special_tokens=None,
        model_max_length=65536,
        **(named_tokens or {}),
    )
    extra = [t for t in (named_tokens or {}).values() if t not in SPECIAL_TOKENS]
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:] + extra})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def sizes(arch: str) -> list[str]:
    return ["tiny"] + [size for (a, size) in PUBLISHED if a == arch]


def _spec(arch: str, size: str) -> dict:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if size == "tiny":
        tiny = TINY[arch]
        return {
            "source": None,
            "text": {**TINY_TEXT, **tiny.get("text", {})},
            "vision": tiny["vision"],
            "pixels": tiny.get("pixels", {"min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS}),
            **{k: tiny[k] for k in ("audio", "chunk_length") if k in tiny},
        }
    if (arch, size) not in PUBLISHED:
        raise ValueError(f"no size {size!r} for {arch}: choose one of {', '.join(sizes(arch))}")
    return PUBLISHED[(arch, size)]


def _classes(arch: str):
    import transformers as t

    return {
        "qwen2_vl": (t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration, t.Qwen2VLProcessor),
        "qwen2_5_vl": (t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration, t.Qwen2_5_VLProcessor),
        "qwen3_vl": (t.Qwen3VLConfig, t.Qwen3VLForConditionalGeneration, t.Qwen3VLProcessor),
        # the whole model class with enable_audio_output false holds the thinker only ("thinker.*" weights)
        "qwen2_5_omni": (t.Qwen2_5OmniConfig, t.Qwen2_5OmniForConditionalGeneration, t.Qwen2_5OmniProcessor),
    }[arch]


def _processor(arch: str, pixels: dict, tokenizer, chunk_length: int = 30):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    processor_class = _classes(arch)[2]
    if arch == "qwen2_5_omni":
        from transformers import WhisperFeatureExtractor

        audio = WhisperFeatureExtractor(
            feature_size=128, chunk_length=chunk_length, return_attention_mask=True
        )
        return processor_class(
            image_processor=Qwen2VLImageProcessor(**pixels),
            video_processor=Qwen2VLVideoProcessor(**pixels),
            feature_extractor=audio,
            tokenizer=tokenizer,
            chat_template=OMNI_CHAT_TEMPLATE,
        )
    if arch == "qwen3_vl":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        image = Qwen2VLImageProcessor(patch_size=16, size=pixels["image"])
        video = Qwen3VLVideoProcessor(patch_size=16, size=pixels["video"])
    else:
        image, video = Qwen2VLImageProcessor(**pixels), Qwen2VLVideoProcessor(**pixels)
    return processor_class(
        image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=CHAT_TEMPLATE
    )


def build_tiny_model(
    out_dir: str | Path, arch: str = "qwen2_vl", size: str = "tiny", config_only: bool = False
) -> Path:
    """Write a random-weight checkpoint with tokenizer and processor to ``out_dir``; return it.

    ``config_only``: config, tokenizer and processor without weights (to inspect a large size).
    """
    import torch

    if arch == "whisper":  # the transcript step's ASR model (vidcap.tiny_whisper)
        from vidcap.tiny_whisper import build_tiny_whisper

        if size != "tiny" or config_only:
            raise ValueError("whisper has only the tiny size")
        return build_tiny_whisper(out_dir)
    spec = _spec(arch, size)
    torch.manual_seed(0)
    out_dir = Path(out_dir)
    omni = arch == "qwen2_5_omni"
    tokenizer = _train_tokenizer(OMNI_TOKENS if omni else None)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + list(OMNI_TOKENS.values())}
    config_class, model_class, _ = _classes(arch)
    processor = _processor(arch, spec["pixels"], tokenizer, spec.get("chunk_length", 30))
    text = dict(
        spec["text"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if omni:
        config = _omni_config(spec, text, ids)
    else:
        config = config_class(
            text_config=text,
            vision_config=spec["vision"],
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
    if size == "tiny":
        model = model_class(config).eval()
        model.generation_config.eos_token_id = ids["<|im_end|>"]
        model.generation_config.pad_token_id = ids["<|endoftext|>"]
        if config_only:
            config.save_pretrained(out_dir)
        else:
            model.save_pretrained(out_dir)
        model.generation_config.save_pretrained(out_dir)
    else:
        config.dtype = "bfloat16"  # as published: vLLM's dtype "auto" follows it
        config.save_pretrained(out_dir)
        from transformers import GenerationConfig

        GenerationConfig(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ).save_pretrained(out_dir)
        if not config_only:
            write_random_weights(model_class, config, out_dir)
    processor.save_pretrained(out_dir)
    what = f"the published dimensions of {spec['source']}" if spec["source"] else "tiny dimensions"
    (out_dir / "VIDCAP_TINY_MODEL.txt").write_text(
        f"Random-weight {arch} model with {what}, built by `python -m vidcap tiny-model`"
        f"{' (config only, no weights)' if config_only else ''}. Its captions are gibberish.\n"
    )
    return out_dir


def _omni_config(spec: dict, text: dict, ids: dict):
    """A Qwen2.5-Omni config whose thinker is ``spec`` (audio output off: no talker, no token2wav weights)."""
    from transformers import Qwen2_5OmniConfig

    tokens = {
        "audio_token_index": ids["<|AUDIO|>"],
        "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"],
        "vision_start_token_id": ids["<|vision_bos|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
    }
    thinker = {
        "text_config": text,
        "vision_config": spec["vision"],
        "audio_config": spec["audio"],
        "user_token_id": ids["<|im_start|>"],
        "tie_word_embeddings": False,
        **tokens,
    }
    # the (unused) talker's token ids within its own vocabulary, so its config validates
    talker = {**tokens, "vocab_size": max(tokens.values()) + 1}
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    return config


def _random_tensor(name: str, shape, dtype, generator):
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and ("norm" in name or ".ln" in name):
        return torch.ones(shape, dtype=dtype)  # norm scales: activations stay finite through many layers
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)


def write_random_weights(
    model_class, config, out_dir: str | Path, dtype: str = "bfloat16", shard_bytes: int = 4 << 30
) -> list[Path]:
    """Random weights for ``model_class(config)`` as safetensors shards, one shard in memory at a time.

    The model is only instantiated on the ``meta`` device, for its parameter names and shapes; the
    names are written as ``save_pretrained`` writes them (transformers' checkpoint format).
    """
    import json

    import torch
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = model_class(config)
    state = model.state_dict()
    try:  # the checkpoint names save_pretrained would write (they differ from the module names)
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    torch_dtype = getattr(torch, dtype)
    item = torch.empty((), dtype=torch_dtype).element_size()
    shards, current, size = [], [], 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * item
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(tensor.shape)))
        size += nbytes
    shards.append(current)
    out_dir = Path(out_dir)
    generator = torch.Generator().manual_seed(0)
    weight_map, paths, total = {}, [], 0
    for index, shard in enumerate(shards, 1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random_tensor(name, shape, torch_dtype, generator) for name, shape in shard}
        total += sum(t.numel() * item for t in tensors.values())
        save_file(tensors, str(out_dir / filename), metadata={"format": "pt"})
        del tensors
        weight_map.update({name: filename for name, _ in shard})
        paths.append(out_dir / filename)
    index_file = out_dir / "model.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths
