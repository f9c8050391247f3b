"""The workflow configuration: its one source of defaults and the check that stops misspelt keys.

Every setting, its default and its description live in ``config/schemas/config.schema.yaml``
(shipped inside the package as ``vidcap/config.schema.yaml``). Python reads defaults from there, never
from literals of its own, and :func:`check_keys` refuses any key the schema does not name, with the
nearest valid one, before Snakemake validates types and fills defaults.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
# the workflow's own defaults file, which every snakemake run of this checkout reads first
WORKFLOW_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


# frame settings that change how frames are extracted, not which: they are left out of the frames rule's
# params, so changing them reruns no job (a record that timed out is extracted again by `vidcap retry`)
FRAMES_RUN_ONLY = ("timeout", "decoder_threads")


class ConfigError(ValueError):
    """The configuration names a key the schema does not know, or a value vidcap cannot use."""


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    # libyaml's loader when PyYAML has it: the pure-Python one takes 0.2 s for the schema, paid by every
    # snakemake invocation and every job
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader


def schema() -> dict:
    """The configuration's JSON schema (a copy: callers may not change the cached one)."""
    return copy.deepcopy(_schema())


def _defaults_of(node: dict):
    if node.get("type") == "object" and "properties" in node:
        values = copy.deepcopy(node.get("default", {}))
        for key, child in node["properties"].items():
            value = _defaults_of(child)
            if value is not _NO_DEFAULT:
                values.setdefault(key, value)
        return values
    return copy.deepcopy(node["default"]) if "default" in node else _NO_DEFAULT


_NO_DEFAULT = object()


def defaults(section: str | None = None) -> dict:
    """Every default of the schema as a nested dict, or one top-level section's (``"frames"``)."""
    values = _defaults_of(_schema())
    return values if section is None else values[section]


def audio_mode(config: dict) -> str:
    """off, transcript or native, from a config or a job's settings (their ``audio`` part); YAML reads a
    bare ``off`` as false, and a missing section is off."""
    mode = (config.get("audio") or {}).get("mode")
    return "off" if mode in (None, False, "off") else str(mode)


def with_defaults(section: str, given: dict | None = None) -> dict:
    """``given`` settings of one section over its schema defaults (for callers outside the workflow)."""
    return {**defaults(section), **(given or {})}


def check_keys(config: dict) -> None:
    """Raise :class:`ConfigError` naming every key the schema does not know (each with the nearest
    valid one), so one run shows all the misspellings of a config."""
    problems = list(_unknown_keys(config, _schema(), ""))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(
            f"{len(problems)} keys the config schema does not know:\n  " + "\n  ".join(problems)
        )


def _unknown_keys(config: dict, node: dict, where: str):
    known = node.get("properties", {})
    entry = node.get("additionalProperties")
    if isinstance(entry, dict) and entry.get("type") == "object":  # a mapping of named entries
        for key, value in config.items():
            if isinstance(value, dict):
                yield from _unknown_keys(value, entry, f"{where}{key}.")
        return
    if node.get("additionalProperties", True) is not False:
        return
    for key, value in config.items():
        if key not in known:
            yield _unknown_key(str(key), known, where)
        elif isinstance(value, dict) and known[key].get("type") == "object":
            yield from _unknown_keys(value, known[key], f"{where}{key}.")


def _unknown_key(key: str, known: dict, where: str) -> str:
    head, dot, rest = key.partition(".")
    if dot and not where and head in known:  # --config engine.x=2: Snakemake does not nest dotted keys
        return (
            f"config key '{key}': a dotted key does not set a nested value; put `{head}: {{{rest}: ...}}` in a "
            f"--configfile, or pass the whole section: --config '{head}={{{rest}: ...}}' (other {head} "
            "settings keep their defaults)"
        )
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    if near:
        return f"unknown config key '{where}{key}' (did you mean '{where}{near[0]}'?)"
    return f"unknown config key '{where}{key}'; valid keys here: {', '.join(sorted(known))}"


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """A whole configuration: schema defaults, then the YAML file at ``path``, then ``overrides``;
    checked for unknown keys and validated (for the command line and tests, as the workflow does)."""
    given = _read_yaml(path) if path is not None else {}
    given = _merge(given, overrides or {})
    check_keys(given)
    merged = _merge(defaults(), given)
    import jsonschema

    try:
        jsonschema.validate(merged, _schema())
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "config"
        raise ConfigError(f"invalid config value at {where}: {exc.message}") from None
    _check_caption_set_sources(merged.get("caption_set") or {})
    check_values(merged)
    return merged


def check_values(config: dict) -> None:
    """Raise :class:`ConfigError` for values each valid on its own but unusable together (run on the
    validated config, defaults filled, before any job)."""
    long_video = config.get("long_video") or {}
    window, least = long_video.get("window_frames"), long_video.get("min_window_frames")
    if window is not None and least is not None and least > window:
        # every remainder would join the previous window: windows up to twice window_frames long
        raise ConfigError(
            f"long_video.min_window_frames {least} is larger than long_video.window_frames {window}: "
            "a remainder shorter than min_window_frames joins the previous window, so every window would "
            "take the next one's frames; set min_window_frames to at most window_frames"
        )


def _check_caption_set_sources(entries: dict) -> None:
    """Each derived entry's ``from`` names ``caption`` or another entry, and no chain of them loops."""
    for name, entry in entries.items():
        seen = [name]
        source = entry.get("from")
        while source not in (None, "caption"):
            if source not in entries:
                raise ConfigError(
                    f"caption_set.{name}.from: no entry '{source}'; use caption or one of: {', '.join(entries)}"
                )
            if source in seen:
                raise ConfigError(f"caption_set.{name}.from: a loop ({' -> '.join([*seen, source])})")
            seen.append(source)
            source = entries[source].get("from")


def build_config(configfiles: list[str] = (), overrides: list[str] = ()) -> dict:
    """The configuration a ``snakemake`` run with these ``--configfile`` files and ``--config KEY=VALUE``
    items sees: the workflow's config/config.yaml (when this is a checkout), the files in order, then
    the items (values parsed as YAML, as Snakemake does), over the schema's defaults; checked and
    validated. Raises OSError for a missing file and ConfigError for anything else wrong."""
    given: dict = {}
    beside = WORKFLOW_CONFIG if WORKFLOW_CONFIG.exists() else None
    for path in [*([beside] if beside else []), *configfiles]:
        given = _merge(given, _read_yaml(path))
    given = _merge(given, parse_overrides(overrides))
    return load(None, given)


def parse_overrides(items: list[str]) -> dict:
    """``--config`` items as Snakemake reads them: KEY=VALUE, the value parsed as YAML."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--config {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {item!r}: the value is not YAML ({_first_line(exc)})") from None
    return out


def _read_yaml(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        try:
            given = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not a {type(given).__name__}")
    return given


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
