"""Caption sets: further captions of each record beside the primary one (config ``caption_set``).

An entry without ``from`` is *visual*: asked of the record's media in the caption job, sharing the video
encoding of the primary caption. An entry with ``from`` is *derived*: text-only, its prompt applied to the
primary caption (``from: caption``) or another entry's, by the summary engine. The config check
(:func:`vidcap.config.load`) has already made sure every ``from`` names an entry and no chain loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRIMARY = "caption"  # the name ``from`` uses for the record's primary caption


@dataclass(frozen=True)
class Entry:
    """One caption-set entry, with the schema's defaults applied (None: the top-level setting)."""

    name: str
    prompt: str
    source: str | None = None  # ``from``: None for a visual entry
    system_prompt: str | None = None
    max_tokens: int | None = None
    sampling: dict = field(default_factory=dict)
    output_format: str | None = None
    output_schema: str | None = None

    @property
    def derived(self) -> bool:
        return self.source is not None


def entries(config: dict) -> list[Entry]:
    """Every entry of ``config["caption_set"]`` in config order."""
    return [_entry(name, given) for name, given in (config.get("caption_set") or {}).items()]


def visual_entries(config: dict) -> list[Entry]:
    """The entries the caption job answers from the media, in config order."""
    return [e for e in entries(config) if not e.derived]


def derived_entries(config: dict) -> list[Entry]:
    """The text-only entries, each after the entry it is derived from (config order otherwise)."""
    pending = [e for e in entries(config) if e.derived]
    done = {PRIMARY, *(e.name for e in visual_entries(config))}
    ordered = []
    while pending:
        ready = [e for e in pending if e.source in done]
        ordered += ready
        done |= {e.name for e in ready}
        pending = [e for e in pending if e not in ready]
    return ordered


def _entry(name: str, given: dict) -> Entry:
    return Entry(
        name=name,
        prompt=given["prompt"],
        source=given.get("from"),
        system_prompt=given.get("system_prompt"),
        max_tokens=given.get("max_tokens"),
        sampling=dict(given.get("sampling") or {}),
        output_format=given.get("output_format"),
        output_schema=given.get("output_schema"),
    )
