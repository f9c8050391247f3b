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


# ------------------------------------------------------------------ the caption job's side (visual entries)
# fields a record's result gets for its visual entries (merged into the output in this order)
SET_FIELDS = ("caption_set", "caption_set_json", "caption_set_captions")


def entry_params(entry: Entry) -> dict:
    """What a visual entry's answers depend on, as the caption rule's params carry it: its own settings
    with the answer schema's content (not its path), so editing the schema file reruns the caption jobs."""
    from vidcap.structured import load_schema

    output_format = entry.output_format or "text"
    schema = None
    if output_format == "json":
        try:
            schema = load_schema(entry.output_schema)
        except (OSError, ValueError) as exc:
            from vidcap.config import ConfigError

            raise ConfigError(f"caption_set.{entry.name}.output_schema: {exc}") from None
    return {
        "prompt": entry.prompt,
        "system_prompt": entry.system_prompt,
        "max_tokens": entry.max_tokens,
        "sampling": dict(entry.sampling),
        "output_format": output_format,
        "output_schema": schema,
    }


def visual_params(config: dict) -> dict:
    """NAME -> :func:`entry_params` of every visual entry, in config order (derived ones are the summary
    step's: editing them must not rerun a caption job)."""
    return {e.name: entry_params(e) for e in visual_entries(config)}


def effective_settings(params: dict, job: dict) -> dict:
    """An entry's caption settings in the shape of the primary's (vidcap.settings.caption_params_of_job):
    the job's, with the entry's prompt, system prompt, sampling overrides, max_tokens and answer format.
    ``params``: one value of :func:`visual_params`; ``job``: the caption job's settings (defaults applied)."""
    from vidcap.config import ConfigError
    from vidcap.settings import CAPTION_PARAM_KEYS

    sampling = {**job["sampling"], **params["sampling"]}
    if params["max_tokens"] is not None:
        sampling["max_tokens"] = params["max_tokens"]
    n = job["candidates"]["n"]
    if n > 1 and sampling["temperature"] <= 0:
        raise ConfigError(f"a caption_set entry with temperature 0 cannot give candidates.n {n} candidates")
    system_prompt = params["system_prompt"]
    return {
        **{k: job.get(k) for k in CAPTION_PARAM_KEYS},
        "prompt": params["prompt"],
        "system_prompt": job["system_prompt"] if system_prompt is None else system_prompt,
        "sampling": sampling,
        "output_format": params["output_format"],
        "output_schema": params["output_schema"],
    }


@dataclass
class Ask:
    """What one kind of request of a caption job asks: a visual entry, with its effective settings
    (:func:`effective_settings`), its guard (vidcap.judge.Judge) and its result-key identity."""

    name: str
    settings: dict
    judge: object
    identity: str

    @property
    def prompt(self) -> str:
        return self.settings["prompt"]

    @property
    def system_prompt(self) -> str:
        return self.settings["system_prompt"]

    @property
    def sampling(self) -> dict:
        return self.settings["sampling"]

    @property
    def json_schema(self) -> dict | None:
        return self.judge.schema


def asks(job: dict, model_id: dict) -> list[Ask]:
    """One :class:`Ask` per visual entry of a caption job's settings (``job["caption_set"]``)."""
    from vidcap.judge import Judge
    from vidcap.result_keys import caption_identity

    out = []
    for name, params in (job.get("caption_set") or {}).items():
        settings = effective_settings(params, job)
        out.append(Ask(name, settings, Judge(settings), caption_identity(settings, model_id)))
    return out


def fold(results: list[dict], n_records: int, entries: list[Ask], marker: str) -> list[dict]:
    """The results with every entry's own result (slots after the records, ``marker``: [record slot, name])
    folded into its record: ``caption_set`` (text or null per name, config order), ``caption_set_json``
    (json entries: the object or null), ``caption_set_captions`` (candidates.keep all: the candidates or
    null) and ``caption_meta.set`` (each entry's meta). Every record gets every name, whatever its status,
    so all records have one shape. A windowed record's entries were asked per window (``marker``: [record
    slot, name, window]): see :func:`fold_windows`. Records keep their slots; the entry slots are dropped."""
    if not entries:
        return results
    kept, done, windows = [], {}, {}
    for result in results[n_records:]:
        if marker not in result:
            kept.append(result)
            continue
        place = result.pop(marker)
        if len(place) == 3:
            windows.setdefault((place[0], place[1]), {})[place[2]] = result
        else:
            done[place[0], place[1]] = result
    records = results[:n_records]
    json_names = [a.name for a in entries if a.judge.json]
    listed = [a.name for a in entries if a.judge.candidates["keep"] == "all"]
    for slot, record in enumerate(records):
        answers = {a.name: done[slot, a.name] for a in entries}
        if "windows" in record["caption_meta"]:
            for name, answer in answers.items():
                fold_windows(record, name, answer, windows.get((slot, name), {}))
        record["caption_set"] = {n: a["caption"] for n, a in answers.items()}
        if json_names:
            record["caption_set_json"] = {n: answers[n].get("caption_json") for n in json_names}
        if listed:
            record["caption_set_captions"] = {n: answers[n].get("captions") for n in listed}
        record["caption_meta"]["set"] = {n: a["caption_meta"] for n, a in answers.items()}
    return records + kept


def fold_windows(record: dict, name: str, answer: dict, sent: dict[int, dict]) -> None:
    """A windowed record's entry ``name`` from its window answers (``sent``: window number -> result), as
    the primary is folded (vidcap.windowed.fold_record): one window's answer is the entry's; with two or
    more, the summary step answers the entry for the whole video (status ``ok`` until then, unless every
    window failed). Each window's answer goes to ``caption_meta.windows[i].set[name]``."""
    from vidcap import windowed

    spans = record["caption_meta"]["windows"]  # the manifest's listing: the primary is folded after this
    answer["caption_meta"]["windows"] = [
        windowed.window_result(None, sent[w], dict(span)) if w in sent else dict(span)
        for w, span in enumerate(spans)
    ]
    windowed.fold_record(answer, [sent[w] for w in sorted(sent)])
    for span, window in zip(spans, answer["caption_meta"].pop("windows")):
        span.setdefault("set", {})[name] = {
            k: v for k, v in window.items() if k not in ("start", "end", "set")
        }
