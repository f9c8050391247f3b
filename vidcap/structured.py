"""Structured captions: the JSON schema the engine enforces, and reading an answer back against it.

With ``output_format: json`` vLLM's structured outputs restrict decoding to the schema, so even a
random-weight model answers with its shape. What the grammar cannot promise is checked here: that the
text is complete (an answer cut at ``max_tokens`` is not JSON), and that event times lie within the
video and in order (they are clamped and each change noted, never dropped silently).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# config/schemas/caption_answer.schema.json, shipped in the package: every string and list is bounded, so
# the answer's worst case fits in sampling.max_tokens, and a model stuck in a loop ends at the bound with
# valid JSON instead of at max_tokens with a cut one.
DEFAULT_SCHEMA_PATH = Path(__file__).with_name("caption_answer.schema.json")


def load_schema(path: str | dict | None) -> dict:
    """The answer schema: vidcap's, or the user's file (which must describe an object with a ``summary``);
    a schema already loaded is returned as it is."""
    if isinstance(path, dict):
        return path
    schema = json.loads(Path(path or DEFAULT_SCHEMA_PATH).read_text(encoding="utf-8"))
    if schema.get("type") != "object" or "summary" not in schema.get("properties", {}):
        raise ValueError(f"output_schema {path}: must be an object schema with a 'summary' property")
    return schema


@dataclass(frozen=True)
class Clock:
    """Where an answer's event times may lie (``low``..``high`` seconds, ``high`` None: unbounded), and
    ``shift``: what is added to them afterwards to make them times in the whole video (a window answered
    in its own clock, from 0 s)."""

    low: float = 0.0
    high: float | None = None
    shift: float = 0.0


def clock_of(duration) -> Clock:
    """A :class:`Clock` as it is, or the clock of a whole video of ``duration`` seconds (None: unknown)."""
    return duration if isinstance(duration, Clock) else Clock(0.0, duration)


@lru_cache(maxsize=8)
def _validator(schema_text: str):
    import jsonschema

    schema = json.loads(schema_text)
    return jsonschema.Draft202012Validator(schema)


def parse_answer(
    text: str, schema: dict, duration: float | Clock | None
) -> tuple[dict | None, str | None, list[str]]:
    """(object, None, notes) for a valid answer, or (None, reason, []) for one that is not.

    ``duration``: the video's length in seconds, or a window's :class:`Clock`; event times end up
    within it, in the whole video's time.

    ``strict=False``: the grammar lets control characters into strings (random weights emit them); they are
    escaped again when the object is written, so the output file is valid JSON either way.
    """
    try:
        answer = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        return None, f"json: does not parse ({exc.msg} at char {exc.pos})", []
    notes = []
    answer = fit_bounds(answer, schema, "", notes)
    errors = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(answer), key=str)
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "answer"
        return None, f"json: {where}: {errors[0].message[:200]}", []
    notes += check_events(answer.get("events"), duration)
    return answer, None, notes


def fit_bounds(value, schema: dict, where: str, notes: list[str]):
    """Cut strings to ``maxLength`` and lists to ``maxItems``, noting each cut.

    The grammar backend counts lengths its own way (xgrammar let 100-character-bounded strings through
    longer); the bounds the schema states are the ones the output keeps.
    """
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        notes.append(f"{where or 'answer'}: {len(value)} characters cut to {schema['maxLength']}")
        return value[: schema["maxLength"]]
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            notes.append(f"{where or 'answer'}: {len(value)} items cut to {schema['maxItems']}")
            value = value[: schema["maxItems"]]
        items = schema.get("items")
        if isinstance(items, dict):
            return [fit_bounds(v, items, f"{where}/{i}", notes) for i, v in enumerate(value)]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {
            k: fit_bounds(v, properties[k], f"{where}/{k}", notes) if k in properties else v
            for k, v in value.items()
        }
    return value


def check_events(events, duration: float | Clock | None) -> list[str]:
    """Clamp event times into [0, duration] (a :class:`Clock`: into [low, high], then shifted) with
    start <= end, in place; one note per change or overlap."""
    if not isinstance(events, list):
        return []
    clock = clock_of(duration)
    notes = []
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not {"start", "end"} <= event.keys():
            continue
        start, end = float(event["start"]), float(event["end"])
        high = clock.high if clock.high is not None else max(start, end, clock.low)
        fixed_start, fixed_end = min(max(start, clock.low), high), min(max(end, clock.low), high)
        if fixed_end < fixed_start:
            fixed_start, fixed_end = fixed_end, fixed_start
        if (fixed_start, fixed_end) != (start, end):
            notes.append(f"event {i}: {start:g}-{end:g} s clamped to {fixed_start:g}-{fixed_end:g} s")
            event["start"], event["end"] = fixed_start, fixed_end
        if clock.shift:
            fixed_start, fixed_end = round(fixed_start + clock.shift, 6), round(fixed_end + clock.shift, 6)
            event["start"], event["end"] = fixed_start, fixed_end
        if i and isinstance(events[i - 1], dict) and fixed_start < float(events[i - 1].get("end", 0.0)):
            notes.append(f"event {i} overlaps event {i - 1}")
    return notes


def summary_of(answer: dict) -> str:
    return str(answer.get("summary", ""))
