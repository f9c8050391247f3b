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


# frame settings that change how frames are extracted, not which: they are left out of the frames rule's
# params, so changing them reruns no job (a record that timed out is extracted again by `vidcap retry`)
FRAMES_RUN_ONLY = ("timeout", "decoder_threads")


class ConfigError(ValueError):
    """The configuration names a key the schema does not know, or a value vidcap cannot use."""


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


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


def with_defaults(section: str, given: dict | None = None) -> dict:
    """``given`` settings of one section over its schema defaults (for callers outside the workflow)."""
    return {**defaults(section), **(given or {})}


def check_keys(config: dict, node: dict | None = None, where: str = "") -> None:
    """Raise :class:`ConfigError` for the first key the schema does not name, suggesting the nearest."""
    node = _schema() if node is None else node
    known = node.get("properties", {})
    if node.get("additionalProperties", True) is not False:
        return
    for key, value in config.items():
        if key not in known:
            path = f"{where}{key}"
            near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
            hint = f" (did you mean '{where}{near[0]}'?)" if near else ""
            valid = ", ".join(sorted(known))
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys here: {valid}")
        if isinstance(value, dict) and known[key].get("type") == "object":
            check_keys(value, known[key], f"{where}{key}.")


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """A whole configuration: schema defaults, then the YAML file at ``path``, then ``overrides``;
    checked for unknown keys and validated (for the command line and tests, as the workflow does)."""
    given: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            given = yaml.safe_load(handle) or {}
    given = _merge(given, overrides or {})
    check_keys(given)
    merged = _merge(defaults(), given)
    import jsonschema

    jsonschema.validate(merged, _schema())
    return merged


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
