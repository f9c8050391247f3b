"""Which failures belong to the node rather than the record: those fail the job, so Snakemake retries it.

A full disk, an I/O error, a stale NFS handle or memory running out say nothing about the video: written
as that record's error they would stay (nothing reruns it until the file changes). So they raise
:class:`InfraError` and the job fails without writing its output. A decode that runs out of time is the
node's fault on a job's first attempt (a loaded node) and the video's own on a retry. Everything else a
file does wrong (missing, unreadable format, no video stream, broken packets) stays that record's error.
"""

from __future__ import annotations

import errno
import os

INFRA_ERRNOS = (
    errno.ENOSPC,  # disk full
    errno.EDQUOT,  # quota full
    errno.EIO,  # the storage failed
    errno.ESTALE,  # NFS handle gone stale
    errno.ENOMEM,
    errno.EROFS,  # the cache's file system went read-only
    errno.EMFILE,  # this process, not the file
    errno.ENFILE,
)
# the same conditions when ffmpeg met them and only its message tells (it writes into the cache file)
_INFRA_TEXTS = tuple(os.strerror(code) for code in INFRA_ERRNOS)
TIMEOUT_PREFIX = "timeout:"


class InfraError(RuntimeError):
    """The node failed this job (disk, I/O, memory, time): fail it so it is retried, write no result."""


def infra_cause(exc: BaseException, attempt: int = 1) -> str | None:
    """Why ``exc`` is the node's failure rather than the file's, or None if it is the file's."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.errno in INFRA_ERRNOS:
        return os.strerror(exc.errno)
    text = str(exc)
    for infra in _INFRA_TEXTS:
        if infra in text:
            return infra
    if text.startswith(TIMEOUT_PREFIX) and attempt <= 1:
        return f"{text} (on the job's first attempt: a loaded node; a retry that times out again fails the record)"
    return None


def raise_if_infra(exc: BaseException, what: str, attempt: int = 1) -> None:
    cause = infra_cause(exc, attempt)
    if cause is not None:
        raise InfraError(f"{what}: {cause}") from exc
