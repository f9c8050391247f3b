"""The report's HTML pages, rendered from the Jinja2 templates shipped in ``vidcap/report/templates``.

Autoescape is on: every value reaches the page escaped by Jinja2, never by hand. The only markup
passed through is the histograms' SVG, which this package drew itself.
"""

from __future__ import annotations

import json
import re

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from vidcap.stats import DISTRIBUTIONS, describe_table, is_tiny_model

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TINY_NOTE = (
    "The model is the random-weight tiny test model (VIDCAP_TINY_MODEL.txt): "
    "its captions are gibberish by design; only their structure means anything."
)
SETTING_GROUPS = ("frames", "sampling", "engine", "candidates", "quality", "audit")


def visible(text: str) -> str:
    """Control characters made visible (random models emit them; browsers would drop them)."""
    return CONTROL_CHARS.sub("\ufffd", str(text))


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("vidcap.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt name in a template fails the build, not the page
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["visible"] = visible
    return env


ENV = environment()


def counts_line(summary: dict) -> str:
    return ", ".join(f"{c} {s}" for s, c in summary["status"].items())


def status_rows(summary: dict) -> list[dict]:
    table = pd.DataFrame({"status": list(summary["status"]), "records": list(summary["status"].values())})
    n = summary["records"]
    table["share"] = [f"{100 * c / n:.1f}%" if n else "" for c in table["records"]]
    return table.to_dict("records")


def settings_rows(settings: dict) -> list[tuple[str, str]]:
    rows = [
        ("prompt", settings.get("prompt", "")),
        ("system prompt", settings.get("system_prompt", "")),
        ("shards", settings.get("shards", "")),
    ]
    for group in SETTING_GROUPS:
        rows += [(f"{group}.{k}", json.dumps(v)) for k, v in (settings.get(group) or {}).items()]
    return rows


def summary_html(
    summary: dict,
    settings: dict,
    steps: dict[str, dict],
    throughput: dict | None,
    histograms: dict[str, str],
    audit: dict | None = None,
    disk: dict | None = None,
) -> str:
    """The build summary page: status, error reasons, lengths, histograms, the caption audit, wall time,
    disk (``disk``: vidcap.prune.cache_sizes plus the cache codec), settings."""
    model = settings.get("model", "?")
    lengths = describe_table(summary["values"])
    lengths.index = [DISTRIBUTIONS[name] for name in lengths.index]
    return ENV.get_template("summary.html").render(
        title="vidcap build summary",
        tiny_note=TINY_NOTE if is_tiny_model(model) else None,
        summary=summary,
        model=model,
        status=status_rows(summary),
        errors=[dict(e, example=e["example"] or "") for e in summary["errors"]],
        lengths=lengths.reset_index(names="label").to_dict("records"),
        histograms=[Markup(svg[svg.index("<svg") :]) for svg in histograms.values()],  # drawn by charts.py
        steps=[{"step": step, **row} for step, row in steps.items()],
        throughput=throughput,
        settings=settings_rows(settings),
        audit=audit,
        audit_groups=audit_rows(audit) if audit else [],
        disk=disk,
    )


def audit_rows(audit: dict) -> list[dict]:
    """Exact and near-duplicate groups as table rows: kind, size, records, an example caption."""
    rows = [
        {"kind": "exact", "size": g["size"], "records": indices_text(g), "example": g["caption"]}
        for g in audit["exact_duplicates"]["top"]
    ]
    rows += [
        {"kind": "near", "size": g["size"], "records": indices_text(g), "example": " | ".join(g["examples"])}
        for g in audit["near_duplicates"]["top"]
    ]
    return rows


def indices_text(group: dict) -> str:
    more = group["size"] - len(group["indices"])
    return ", ".join(map(str, group["indices"])) + (f" ... ({more} more)" if more > 0 else "")


def gallery_html(summary: dict, cards: list[dict], model: str, sample: int, max_errors: int) -> str:
    """The caption gallery page: one card per shown record, with what the selection covers."""
    n, shown, errors = summary["records"], len(cards), summary["status"].get("error", 0)
    if shown == n:
        scope = f"all {n} records"
    else:
        scope = (
            f"{shown} of {n} records: an evenly spaced sample of {sample} plus "
            f"{'every error' if errors <= max_errors else f'the first {max_errors} errors'}"
        )
    return ENV.get_template("gallery.html").render(
        title="vidcap caption gallery",
        tiny_note=TINY_NOTE if is_tiny_model(model) else None,
        scope=scope,
        records=n,
        counts=counts_line(summary),
        model=model,
        cards=cards,
    )
