"""Deciding what an answer becomes: which candidate is the caption, or whether to sample again.

One request returns ``candidates.n`` texts. Each is checked (vidcap.quality's degeneration detectors,
and with ``output_format: json`` that it parses and matches the schema); the caption is chosen among
the ones that pass (``candidates.keep``). When none passes, the record is sampled again with a seed
derived from its own and the attempt, and a higher presence penalty, up to ``quality.retries`` times;
after the last it is kept as ``degenerate`` with the best text of all attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vidcap.quality import best_attempt, choose, degeneration, retry_presence_penalty, retry_seed
from vidcap.structured import load_schema, parse_answer, summary_of


@dataclass
class Attempt:
    """What one request of a record returned, kept until the record is settled."""

    seed: int | None
    texts: list[str]
    finish_reasons: list[str | None]
    reasons: list[str | None]
    parsed: list[dict | None]
    notes: list[list[str]]


@dataclass
class Verdict:
    status: str  # ok | truncated | degenerate, or "retry"
    attempt: Attempt | None = None
    chosen: int = 0
    rejected: list[dict] = field(default_factory=list)


class Judge:
    def __init__(self, settings: dict):
        self.quality = settings["quality"]
        self.candidates = settings["candidates"]
        self.base_penalty = float(settings["sampling"]["presence_penalty"])
        self.json = settings.get("output_format", "text") == "json"
        self.schema = load_schema(settings.get("output_schema")) if self.json else None

    def check(self, seed, texts: list[str], finish_reasons: list, duration: float | None) -> Attempt:
        reasons, parsed, notes = [], [], []
        for text, finish in zip(texts, finish_reasons):
            answer, reason, note = (None, None, [])
            if self.json:
                answer, reason, note = parse_answer(text, self.schema, duration)
                if reason and finish == "length":
                    reason = "json: cut at max_tokens"
            if reason is None:
                reason = degeneration(summary_of(answer) if self.json else text, self.quality)
            reasons.append(reason)
            parsed.append(answer)
            notes.append(note)
        return Attempt(seed, texts, list(finish_reasons), reasons, parsed, notes)

    def decide(self, item, attempt: Attempt) -> Verdict:
        """Accept a candidate, ask for another attempt (``item`` gets its seed and penalty), or give up."""
        eligible = [r is None for r in attempt.reasons]
        if any(eligible):
            chosen = choose(self._texts(attempt), self.candidates["keep"], eligible)
            status = "truncated" if attempt.finish_reasons[chosen] == "length" else "ok"
            return Verdict(status, attempt, chosen, list(item.rejected))
        item.rejected.append({"attempt": item.attempt, "seed": attempt.seed, "reason": attempt.reasons[0]})
        item.tried.append(attempt)
        if item.attempt < int(self.quality["retries"]):
            item.attempt += 1
            item.seed = retry_seed(item.first_seed, item.attempt)
            item.presence_penalty = retry_presence_penalty(
                self.base_penalty, item.attempt, float(self.quality["presence_penalty_step"])
            )
            return Verdict("retry")
        # every attempt failed: keep the most informative text of all of them
        flat = [(a, i) for a in item.tried for i in range(len(a.texts))]
        best = best_attempt([self._texts(a)[i] for a, i in flat])
        kept, chosen = flat[best]
        return Verdict("degenerate", kept, chosen, list(item.rejected))

    def _texts(self, attempt: Attempt) -> list[str]:
        if not self.json:
            return attempt.texts
        return [summary_of(p) if p is not None else t for p, t in zip(attempt.parsed, attempt.texts)]

    def fields(self, verdict: Verdict) -> dict:
        """The result's caption fields: caption, and by settings captions / caption_json."""
        attempt, chosen = verdict.attempt, verdict.chosen
        texts = self._texts(attempt)
        out = {"caption": texts[chosen]}
        if self.candidates["keep"] == "all":
            out["captions"] = texts
        if self.json:
            out["caption_json"] = attempt.parsed[chosen]
        return out

    def meta(self, verdict: Verdict, attempts: int) -> dict:
        """caption_meta fields of the verdict."""
        meta = {"attempts": attempts}
        if verdict.rejected:
            meta["rejected"] = verdict.rejected
        if self.candidates["keep"] == "consensus":
            meta["chosen"] = verdict.chosen
        notes = verdict.attempt.notes[verdict.chosen]
        if notes:
            meta["json_notes"] = notes
        return meta
