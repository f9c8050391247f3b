"""Caption quality without an engine: degeneration detectors, re-sampling seeds, candidate choice.

Everything here is a pure function of strings and the ``quality`` config section (thresholds come from
the schema, never from literals here), so the caption engine, the audit and the tests share one
definition of "degenerate". A detector returns a short reason string, or None when the text passes.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import zlib
from collections import Counter

# Unicode blocks per script; a letter outside every listed block counts as "other". Ranges, not a
# language-id model: the failure we guard against is a caption drifting into another script
# (Qwen models slipping into Chinese), which a script share detects exactly and deterministically.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x0041, 0x024F), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF), (0xFF21, 0xFF5A)),
    "cjk": (
        (0x2E80, 0x2FDF),
        (0x3040, 0x30FF),
        (0x3100, 0x31FF),
        (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF),
        (0xAC00, 0xD7AF),
        (0x1100, 0x11FF),
        (0xF900, 0xFAFF),
        (0xFF66, 0xFF9F),
        (0x20000, 0x3134F),
    ),
    "cyrillic": ((0x0400, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)),
    "greek": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "hebrew": ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)),
    "devanagari": ((0x0900, 0x097F), (0xA8E0, 0xA8FF)),
    "thai": ((0x0E00, 0x0E7F),),
}
# vLLM accepts presence_penalty in [-2, 2]; raising it further on retries would be refused
MAX_PRESENCE_PENALTY = 2.0
KEEP_MODES = ("first", "all", "consensus")
# one token per CJK character (no spaces between words there), otherwise runs of word characters
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; each CJK character is a token of its own."""
    return _TOKEN.findall(text.lower())


def repeated_ngram_share(text: str, n: int) -> float:
    """Share of the text's word n-grams that occur more than once (0: no repeats, 1: a pure loop).

    Counts every occurrence of a repeated n-gram, first included (the word-repetition ratio of
    data-juicer), so "a b c a b c a b c" scores 1.0 and a plain sentence 0.0.
    """
    words = tokens(text)
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if not total:
        return 0.0
    return sum(c for c in grams.values() if c > 1) / total


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes: loops compress far better than prose (Whisper's test)."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data, 9))


def script_of(char: str) -> str:
    code = ord(char)
    for name, ranges in SCRIPTS.items():
        if any(lo <= code <= hi for lo, hi in ranges):
            return name
    return "other"


def script_shares(text: str) -> dict[str, float]:
    """Share of the text's letters in each script (digits, punctuation and spaces are ignored)."""
    letters = Counter(script_of(c) for c in unicodedata.normalize("NFC", text) if c.isalpha())
    total = sum(letters.values())
    return {name: count / total for name, count in letters.most_common()} if total else {}


def degeneration(text: str | None, quality: dict) -> str | None:
    """Why ``text`` is a degenerate caption, or None when it passes every enabled check.

    ``quality`` is the config's ``quality`` section; a threshold set to null disables its check.
    Checks run cheapest-first and the first failure is reported.
    """
    words = tokens(text or "")
    min_words = quality.get("min_words")
    if not words:
        return "empty"
    if min_words is not None and len(words) < min_words:
        return f"too short: {len(words)} words < min_words {min_words}"
    max_share, n = quality.get("max_repeat_ngram_share"), quality["repeat_ngram"]
    if max_share is not None:
        share = repeated_ngram_share(text, n)
        if share > max_share:
            return f"loop: {share:.2f} of {n}-grams repeated > {max_share}"
    max_ratio = quality.get("max_compression_ratio")
    if max_ratio is not None:
        ratio = compression_ratio(text)
        if ratio > max_ratio:
            return f"loop: compression ratio {ratio:.2f} > {max_ratio}"
    return _wrong_script(text, quality)


def _wrong_script(text: str, quality: dict) -> str | None:
    expected = quality.get("language")
    if not expected:
        return None
    wanted = [expected] if isinstance(expected, str) else list(expected)
    unknown = [name for name in wanted if name not in SCRIPTS]
    if unknown:
        raise ValueError(f"quality.language: unknown script {unknown[0]!r}; known: {', '.join(SCRIPTS)}")
    shares = script_shares(text)
    share = sum(shares.get(name, 0.0) for name in wanted)
    if shares and share < quality["min_script_share"]:
        top = next(iter(shares))
        return f"wrong script: {share:.2f} of letters {'/'.join(wanted)} (mostly {top})"
    return None


def retry_seed(record_seed: int | None, attempt: int) -> int | None:
    """Sampling seed of re-sampling attempt ``attempt`` (0 = the first try, which keeps the record seed).

    Derived from the record seed alone, so a rebuild re-samples exactly the same way; greedy sampling
    (seed None) stays None and only the raised presence penalty changes its output.
    """
    if record_seed is None or attempt == 0:
        return record_seed
    return int(hashlib.sha256(f"{record_seed}:retry:{attempt}".encode()).hexdigest()[:8], 16)


def retry_presence_penalty(base: float, attempt: int, step: float) -> float:
    """Presence penalty of attempt ``attempt``: ``base`` raised by ``step`` per retry, within vLLM's range."""
    return min(MAX_PRESENCE_PENALTY, base + step * attempt)


def best_attempt(texts: list[str | None]) -> int:
    """Index of the least degenerate of several rejected captions: the most distinct words (ties: first).

    A loop has few distinct words, an empty caption none, so this keeps the most informative one.
    """
    scores = [len(set(tokens(t or ""))) for t in texts]
    return scores.index(max(scores))


def _char_ngrams(text: str, n: int = 3) -> Counter:
    squashed = " ".join(tokens(text))
    return Counter(squashed[i : i + n] for i in range(max(1, len(squashed) - n + 1)))


def similarity(a: Counter, b: Counter) -> float:
    """Cosine of two character n-gram count vectors (1: same text, 0: nothing in common)."""
    dot = sum(count * b[gram] for gram, count in a.items() if gram in b)
    norm = math.sqrt(sum(c * c for c in a.values()) * sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def consensus(candidates: list[str]) -> int:
    """Minimum-Bayes-risk choice: the candidate with the highest summed similarity to the others.

    Character 3-gram cosine works for any script and rewards shared content over shared wording;
    ties go to the earlier candidate, so the choice is deterministic.
    """
    vectors = [_char_ngrams(c or "") for c in candidates]
    scores = [sum(similarity(v, w) for j, w in enumerate(vectors) if j != i) for i, v in enumerate(vectors)]
    best = max(scores)
    # scores are sums of floats in a fixed order; the tolerance keeps exact ties exact across platforms
    return next(i for i, s in enumerate(scores) if s >= best - 1e-12)


def choose(candidates: list[str], keep: str, eligible: list[bool] | None = None) -> int:
    """Index of the candidate that becomes ``caption``.

    ``first`` and ``all`` take the first eligible candidate (``all`` also writes every candidate to
    ``captions``); ``consensus`` takes the MBR choice among the eligible ones. ``eligible`` marks the
    candidates that passed the degeneration checks; when none did, every candidate is considered.
    """
    if keep not in KEEP_MODES:
        raise ValueError(f"candidates.keep: {keep!r} is not one of {', '.join(KEEP_MODES)}")
    if not candidates:
        raise ValueError("choose: no candidates")
    pool = [i for i, ok in enumerate(eligible or []) if ok] or list(range(len(candidates)))
    if keep != "consensus" or len(pool) == 1:
        return pool[0]
    return pool[consensus([candidates[i] for i in pool])]
