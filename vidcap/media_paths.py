"""Whether a record's media path stays inside media_root (the ``media_root_only`` option).

With ``media_root_only: true`` a dataset cannot make the frames step read files outside the media
folder: absolute paths, ``~`` paths and paths whose ``..`` parts climb out of it are refused, each
as an error of its record. Symbolic links inside media_root are followed as they are: whoever
placed them there owns the folder.
"""

from __future__ import annotations

import os


def escapes_root(item: str) -> str | None:
    """Why ``item`` leaves media_root (None: it stays inside)."""
    if not isinstance(item, str) or not item:
        return "not a path"
    if item.startswith("~"):
        return f"{item!r} is a home-folder (~) path"
    if os.path.isabs(item):
        return f"{item!r} is an absolute path"
    parts = os.path.normpath(item).split(os.sep)
    if parts[0] == "..":
        return f"{item!r} climbs out of media_root (..)"
    return None
