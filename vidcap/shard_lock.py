"""Who may rewrite a build's shard files: the Snakemake process that holds their lock, for its lifetime.

Shards are written while the Snakefile is parsed (vidcap.shards), before Snakemake takes its own lock,
and every ``snakemake`` command parses it: a dry run, ``--lint`` or ``--report`` after an input edit
would otherwise rewrite shard files under a running build, whose later jobs would then read records it
never planned. So the process that syncs the shards first takes an exclusive ``flock`` on
``<shards>/.lock`` and keeps it until it exits (the kernel drops it if the process dies). A process that
finds it held does not touch the shards: a command that only looks (dry run, lint, report, summary…)
says so and shows the shards as they are; a build waits a little for another command's parse to end,
then stops with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

LOCK_FILE = ".lock"
# Snakemake options that plan, check or report without running a job
_LOOKING = {
    "--dry-run",
    "--dryrun",
    "--lint",
    "--report",
    "--summary",
    "--detailed-summary",
    "--list",
    "--list-rules",
    "--list-target-rules",
    "--dag",
    "--rulegraph",
    "--filegraph",
    "--d3dag",
    "--list-changes",
    "--lc",
    "--list-input-changes",
    "--li",
    "--list-params-changes",
    "--lp",
    "--list-code-changes",
    "--containerize",
    "--print-compilation",
    "--unlock",
    "--cleanup-metadata",
}
_SHORT_LOOKING = re.compile(r"^-[A-Za-z]*[nlSD][A-Za-z]*$")  # -n, -np, -l, -S, -D


def only_looks(argv: list[str], dryrun: bool = False) -> bool:
    """Whether this ``snakemake`` command runs no job (``dryrun``: what Snakemake says, where it does)."""
    return dryrun or any(
        arg.split("=", 1)[0] in _LOOKING or bool(_SHORT_LOOKING.match(arg)) for arg in argv[1:]
    )


def claim(shard_dir: str | os.PathLike, wait: float = 0.0) -> int | None:
    """Take the shard lock for the rest of this process (the returned descriptor stays open); None when
    another process still holds it after ``wait`` seconds."""
    folder = Path(shard_dir)
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(folder / LOCK_FILE, flags, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holder(shard_dir: str | os.PathLike) -> str:
    """The process id written by the lock's holder, for messages."""
    with contextlib.suppress(OSError):
        text = (Path(shard_dir) / LOCK_FILE).read_text(encoding="utf-8").strip()
        if text:
            return f"process {text}"
    return "another process"
