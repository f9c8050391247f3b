"""Route everything a Snakemake job prints (Python, vLLM, C libraries) into its ``log:`` file.

A retried job (Snakemake's ``attempt`` > 1) appends to the log of the attempt before, each attempt under
a header, so the reason the first attempt failed is still there to read. Snakemake deletes a job's log
files before every attempt, so each log has a hidden hard link beside it (``.NAME.attempts``, the same
file under a name Snakemake does not know) that a retry puts back before appending; a job that ends well
removes it. A job killed outright (scancel, the OOM killer) keeps it too: nothing has to run at death. ``chatter``: a second file
that takes the job's raw stdout and stderr (vLLM's and the C libraries' output), so the main log holds
vidcap's own lines only (what it writes to the handle given) and a failure's traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def attempt_header(attempt: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"=== attempt {attempt}, {stamp}, host {socket.gethostname()}, pid {os.getpid()} ===\n"


def kept_log(path: str | os.PathLike) -> Path:
    """The hidden second name of a job log, which outlives Snakemake's deletion before a retry."""
    path = Path(path)
    return path.with_name(f".{path.name}.attempts")


def _open_log(path: str, attempt: int) -> IO:
    kept = kept_log(path)
    if attempt > 1 and not os.path.exists(path):
        with contextlib.suppress(OSError):  # no earlier attempt's log (or no hard links here): start one
            os.link(kept, path)
    handle = open(path, "a" if attempt > 1 else "w", buffering=1, encoding="utf-8")
    with contextlib.suppress(OSError):
        if not (kept.exists() and os.path.samefile(kept, path)):
            kept.unlink(missing_ok=True)
            os.link(path, kept)
    handle.write(attempt_header(attempt))
    return handle


def _forget_attempts(*paths: str | None) -> None:
    for path in paths:
        if path:
            kept_log(path).unlink(missing_ok=True)


@contextlib.contextmanager
def job_log(path: str, attempt: int = 1, chatter: str | None = None) -> Iterator[IO]:
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(_open_log(path, attempt))
        raw = stack.enter_context(_open_log(chatter, attempt)) if chatter else log
        if chatter:
            print(f"(engine and library output: {chatter})", file=log)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(raw.fileno(), 1)
        os.dup2(raw.fileno(), 2)
        try:
            yield log
            _forget_attempts(path, chatter)  # done: no retry will need the history
        except BaseException:
            if chatter:  # the reason belongs beside vidcap's own lines (Python prints it to stderr too)
                traceback.print_exc(file=log)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
