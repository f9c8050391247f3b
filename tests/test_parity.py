"""Parity: greedy captions from the workflow (vLLM) equal transformers' ``generate`` on the same frames.

Runs the real workflow on the tiny random Qwen2-VL, then feeds the very frames it cached (from the
frames manifests) through the Hugging Face processor and model with greedy decoding. Random
weights make any difference in inputs (frames, metadata, prompt, chat template) show up in the tokens.
"""

import json
from pathlib import Path

import pytest
from helpers import CAPTIONED, make_video, run_snakemake, tiny_config, write_records

pytestmark = pytest.mark.slow

MAX_TOKENS = 12


def hf_generate(model, processor, messages, frames_entry, workdir):
    import numpy as np
    import torch

    from vidcap import frame_store

    def frames_of(item):  # the cache file as the workflow reads it (decoded when compact)
        return np.array(frame_store.read(workdir / item["frames"], item.get("content")))

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = {}
    if frames_entry["videos"]:
        kwargs["videos"] = [frames_of(v) for v in frames_entry["videos"]]
        kwargs["video_metadata"] = [
            {
                "fps": v["meta"]["fps"],
                "duration": v["meta"]["duration"],
                "total_num_frames": v["meta"]["total_num_frames"],
                "frames_indices": v["meta"]["frames_indices"],
            }
            for v in frames_entry["videos"]
        ]
        kwargs["do_sample_frames"] = False
    if frames_entry["images"]:
        kwargs["images"] = [frames_of(i) for i in frames_entry["images"]]
    inputs = processor(text=[text], return_tensors="pt", **kwargs)
    eos = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=eos[1]
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return new, processor.tokenizer.decode(new, skip_special_tokens=True), int(inputs["input_ids"].shape[1])


def test_workflow_greedy_captions_match_transformers(tmp_path, tiny_model):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    for i, (source, seconds) in enumerate([("testsrc2", 1.0), ("mandelbrot", 2.0), ("smptebars", 1.5)]):
        make_video(tmp_path / f"v{i}.mp4", seconds=seconds, size="96x64", rate=8, source=source)
    from PIL import Image

    Image.new("RGB", (80, 60), (10, 200, 90)).save(tmp_path / "green.png")
    records = [{"video": f"v{i}.mp4", "conversation": [{"from": "human", "value": ""}]} for i in range(3)]
    records.append(
        {"image": "green.png", "video": "v1.mp4", "conversation": [{"from": "human", "value": ""}]}
    )
    write_records(tmp_path / "records.json", records)
    config = tiny_config(
        tiny_model,
        sampling={"max_tokens": MAX_TOKENS, "temperature": 0.0, "seed": 0},
        engine={"dtype": "float32"},
        prompt="Please describe the video in detail.",
        system_prompt="You are a helpful assistant.",
    )
    run_snakemake(tmp_path, config)
    captions = json.loads((tmp_path / "captions.json").read_text())
    frames_by_digest = {}
    for manifest in sorted(Path(tmp_path / "results" / "frames").glob("*.json")):
        for entry in json.loads(manifest.read_text())["records"]:
            frames_by_digest[entry["digest"]] = entry

    from vidcap.prompts import build_messages
    from vidcap.records import record_digest

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert len(captions) == len(records)
    for record, out in zip(records, captions):
        meta = out["caption_meta"]
        assert meta["status"] in CAPTIONED, meta
        entry = frames_by_digest[record_digest(record)]
        messages = build_messages(
            config["system_prompt"], len(entry["images"]), len(entry["videos"]), config["prompt"]
        )
        tokens, text, prompt_len = hf_generate(model, processor, messages, entry, tmp_path)
        assert meta["prompt_tokens"] == prompt_len
        assert meta["output_tokens"] == len(tokens)
        assert out["caption"] == text, (out["caption"], text)
    assert len({out["caption"] for out in captions}) > 1  # distinct inputs gave distinct token streams
