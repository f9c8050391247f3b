"""What the command line says when a file it was given is missing or malformed: one line, exit code 2.

A traceback is for a bug in vidcap; a path that does not exist, a file that is not JSON or a config key
that is misspelt is the user's to fix, and the one line naming the file and the problem is what helps.
``VIDCAP_DEBUG=1`` shows the traceback anyway.
"""

from __future__ import annotations

import os

import yaml

USAGE_ERROR = 2  # argparse's exit code for a bad command line: the same kind of mistake


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an error in what the user gave, or None for anything else (a bug)."""
    if os.environ.get("VIDCAP_DEBUG"):
        return None
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (ValueError, yaml.YAMLError)) or _is_json_stream_error(exc):
        return one_line(str(exc)) or type(exc).__name__
    return None


def one_line(message: str) -> str:
    """A message of several lines (all misspelt keys of a config, say) as one: "head: a; b; c"."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


def _is_json_stream_error(exc: BaseException) -> bool:
    try:
        import ijson
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(exc, ijson.JSONError)
