"""A random-weight Whisper checkpoint (model, tokenizer, feature extractor), built entirely offline.

The tokenizer is a byte-level BPE trained on the same synthetic corpus as the tiny Qwen models, written
as Whisper's vocab.json/merges.txt, plus Whisper's special tokens (start of transcript, a language token
for every language transformers knows, task tokens, no-timestamps); timestamp tokens are left out, as
the transcript step asks for none. The encoder keeps Whisper's real input geometry (80 mel bins, 3000
frames per 30 s, 1500 encoder positions), so vLLM's Whisper path runs unchanged; everything else is
tiny. Its transcripts are gibberish by design.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_WHISPER = {
    "num_mel_bins": 80,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "d_model": 128,  # head_dim 64, which vLLM's CPU attention supports
    "encoder_ffn_dim": 256,
    "decoder_ffn_dim": 256,
    "max_source_positions": 1500,  # 30 s of 10 ms mel frames, halved by the encoder's stride-2 conv
    "max_target_positions": 448,
}
# the weights' seed: with 0 greedy decoding repeats a lone UTF-8 byte and prints nothing; with this one it
# prints visible characters (still gibberish), so a transcript in a test or the demo is not empty
SEED = 1
TASK_TOKENS = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>"]


def whisper_tokenizer():
    from transformers import WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    from vidcap.tiny_model import bpe_state

    state = bpe_state()
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab.write_text(json.dumps(state["vocab"]), encoding="utf-8")
        lines = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
        merges.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
        tokenizer = WhisperTokenizer(str(vocab), str(merges), model_max_length=448)
    specials = ["<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), *TASK_TOKENS]
    tokenizer.add_special_tokens({"additional_special_tokens": [*specials, "<|notimestamps|>"]})
    return tokenizer


def build_tiny_whisper(out_dir: str | Path) -> Path:
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(SEED)
    tokenizer = whisper_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        begin_suppress_tokens=None,
        suppress_tokens=None,
        **TINY_WHISPER,
    )
    WhisperForConditionalGeneration(config).eval().save_pretrained(out_dir)
    extractor = WhisperFeatureExtractor(feature_size=TINY_WHISPER["num_mel_bins"])
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    (out_dir / "VIDCAP_TINY_MODEL.txt").write_text(
        "Random-weight whisper model with tiny dimensions, built by `python -m vidcap tiny-model`. "
        "Its transcripts are gibberish.\n"
    )
    return out_dir
