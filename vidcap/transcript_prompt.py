"""The transcript step's segments in a caption prompt (``audio.mode: transcript``).

A record's prompt gets its time-stamped segments after the question, as many whole segments as fit in
``audio.transcript_tokens`` (counted with the caption model's own tokenizer); a cut is said in the prompt
and in ``caption_meta.audio``. The prompt is part of every caption's result key, so a changed transcript
captions again and an unchanged one is found in the store. A record without speech keeps its prompt as
it is, and its caption says why in ``caption_meta.audio`` ("no audio", "no speech", "audio undecodable").
"""

from __future__ import annotations

import functools

from vidcap.atomic import iter_jsonl

HEADER = "Speech heard in the video (automatic transcript, times in seconds):"


def segment_line(segment: dict) -> str:
    return f"[{segment['start']:.1f}-{segment['end']:.1f}] {segment['text']}"


def within(segments: list[dict], start: float, end: float) -> list[dict]:
    """The segments overlapping [start, end), their times cut to it (a window hears only its own span)."""
    return [
        {**s, "start": max(s["start"], start), "end": min(s["end"], end)}
        for s in segments
        if s["start"] < end and s["end"] > start
    ]


class Transcripts:
    """A shard's transcript lines (vidcap.transcribe), one per record in shard order."""

    def __init__(self, path: str, model: str, budget: int):
        from transformers import AutoTokenizer

        self.lines = list(iter_jsonl(path))
        self.path, self.budget, self.notes = path, int(budget), {}
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    @classmethod
    def of_job(cls, settings: dict) -> Transcripts | None:
        """The caption job's transcripts; None when ``audio.mode`` is not transcript (nothing changes)."""
        if not settings.get("transcripts"):
            return None
        return cls(settings["transcripts"], settings["model"], settings["audio"]["transcript_tokens"])

    @functools.cache  # noqa: B019 -- one object per job
    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def line(self, slot: int, digest: str) -> dict:
        line = self.lines[slot] if slot < len(self.lines) else {}
        if line.get("digest") != digest:
            raise RuntimeError(f"{self.path}: line {slot} belongs to another record: stale transcripts")
        return line

    def prompt(self, slot: int, digest: str, prompt: str) -> str:
        """``prompt`` with the record's transcript after it (within the token budget)."""
        segments = self.line(slot, digest)["transcript"]
        if not segments:
            return prompt
        block, used = self.fit(segments)
        if used < len(segments):
            self.notes[slot] = f"transcript cut to {used} of {len(segments)} segments ({self.budget} tokens)"
        return f"{prompt}\n\n{block}" if block else prompt

    def for_window(self, slot: int, digest: str):
        """(start, end) -> the text after a window's prompt: the segments inside its span (cut to it)."""
        segments = self.line(slot, digest)["transcript"] or []

        def heard(start: float, end: float) -> str:
            inside = within(segments, start, end)
            block, used = self.fit(inside) if inside else ("", 0)
            if used < len(inside):
                self.notes[slot] = f"a window's transcript cut to {used} of {len(inside)} segments"
            return f"\n\n{block}" if block else ""

        return heard

    def fit(self, segments: list[dict]) -> tuple[str, int]:
        """The block of the first segments that fit the budget, and how many that is."""
        lines = [HEADER]
        for used, segment in enumerate(segments):
            rest = len(segments) - used
            cut = f"[transcript cut: {rest} later segments left out]"
            candidate = "\n".join([*lines, segment_line(segment)])
            if self.tokens(candidate + ("\n" + cut if rest > 1 else "")) > self.budget:
                return ("\n".join([*lines, cut]) if used else ""), used
            lines.append(segment_line(segment))
        return "\n".join(lines), len(segments)

    def annotate(self, slot: int, result: dict) -> None:
        """The record's output fields: ``transcript`` (segments or null) and why there is none or it was cut."""
        line = self.lines[slot]
        result["transcript"] = line["transcript"]
        for window in result["caption_meta"].get("windows") or ():  # what the summary hears of each window
            speech = " ".join(
                s["text"] for s in within(line["transcript"] or [], window["start"], window["end"])
            )
            if speech.strip():
                window["speech"] = speech.strip()
        note = line.get("note") or self.notes.get(slot)
        if note:
            result["caption_meta"]["audio"] = note
