"""``config/README.md``, written from the config schema (``python -m vidcap config-doc``).

The Snakemake Workflow Catalog shows a workflow's ``config/README.md`` as its configuration guide; the
schema is the one place every key, default and description lives, so the page is generated from it
and a test keeps the checked-in copy current.
"""

from __future__ import annotations

import json

from vidcap import config

README_PATH = "config/README.md"

INTRO = """\
# Configuring vidcap

<!-- Generated from config/schemas/config.schema.yaml by `python -m vidcap config-doc --output config/README.md`;
edit the schema, not this file (tests/test_config_doc.py checks it is current). -->

vidcap captions the videos and images of a dataset (a `.json` array or `.jsonl` file of records) with a
Qwen-VL model on vLLM, and writes the records back with a caption added.

- `config/config.yaml` holds the defaults of a run from this folder; change it, or pass
  `--configfile my.yaml` (only the keys it sets) and `--config key=value` for top-level keys.
- `input` is the one key without a default. Every other key below has the default shown; a misspelt
  key stops the run and names the nearest valid one.
- Run it: `snakemake --configfile my.yaml` in this repository, or use vidcap as a Snakemake module
  in a workflow of your own (docs/module.md).
"""


def _type_of(node: dict) -> str:
    if "anyOf" in node:
        return " or ".join(_type_of(choice) for choice in node["anyOf"])
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    kind = node.get("type", "any")
    if node.get("type") == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    return " or ".join(kind) if isinstance(kind, list) else kind


def _value(value) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(properties: dict, prefix: str = "") -> list[str]:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, node in properties.items():
        if node.get("type") == "object" and "properties" in node:
            continue  # a section of its own below
        default = _value(node["default"]) if "default" in node else "**required**"
        lines.append(
            f"| `{prefix}{key}` | {_type_of(node)} | {default} | {_cell(node.get('description', ''))} |"
        )
    return lines


def render(schema: dict | None = None) -> str:
    """The whole page, for ``schema`` (default: vidcap's)."""
    schema = config.schema() if schema is None else schema
    properties = schema["properties"]
    parts = [INTRO, "## General\n", "\n".join(_table(properties)), ""]
    for key, node in properties.items():
        if node.get("type") == "object" and "properties" in node:
            parts += [f"## `{key}`\n", _cell(node.get("description", "")) + "\n"]
            parts += ["\n".join(_table(node["properties"], prefix=f"{key}.")), ""]
    return "\n".join(parts)


def write(path: str = README_PATH) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render())
    return path
