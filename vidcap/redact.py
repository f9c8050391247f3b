"""Secrets kept out of what vidcap writes down (provenance, the report, logs).

The server's API key never enters the config (engine.api_key_env names the environment variable that
holds it). Other settings may hold secrets the user put there: a token among ``engine.vllm_args``
(EngineArgs has ``hf_token``), ``engine.env`` values, a password or a query string in ``engine.url``.
What is recorded of them is their name and the fact that they were set, never the value.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
# a setting whose name says it holds a secret
SECRET_NAME = re.compile(r"token|secret|passw|api_?key|auth|credential|private", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without the password of its userinfo and with every query value replaced."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        query = "&".join(
            f"{pair.split('=', 1)[0]}={REDACTED}" if "=" in pair else REDACTED
            for pair in parts.query.split("&")
            if pair
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:  # not even a URL: show nothing of it
        return REDACTED


def redact_mapping(values: dict) -> dict:
    """``values`` with every value under a secret-sounding name replaced (nested mappings too)."""
    out = {}
    for key, value in values.items():
        if SECRET_NAME.search(str(key)) and value not in (None, ""):
            out[key] = REDACTED
        elif isinstance(value, dict):
            out[key] = redact_mapping(value)
        else:
            out[key] = value
    return out


def redacted_engine(engine: dict) -> dict:
    """The engine settings as provenance and the report show them: ``env`` values all hidden (any variable
    may be a secret), secret-sounding ``vllm_args`` hidden, the URL without password or query values."""
    out = dict(engine)
    if isinstance(out.get("url"), str):
        out["url"] = redact_url(out["url"])
    if isinstance(out.get("vllm_args"), dict):
        out["vllm_args"] = redact_mapping(out["vllm_args"])
    if isinstance(out.get("env"), dict):
        out["env"] = {key: REDACTED for key in out["env"]}
    return out
