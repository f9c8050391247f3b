"""Records, media and output on S3-compatible object storage (docs/object-storage.md).

Snakemake's storage plugin moves the files: media become inputs of the frames job (retrieved into
``.snakemake/storage/`` before it starts), the output is uploaded after the merge. vidcap only needs to
tell a URL from a path, join media paths under a URL root, fetch the records file while the workflow is
parsed (shards are written then, before any job), and key staged media in the frame cache by what they
are (URL and content), not by where and when Snakemake put the local copy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import posixpath

# schemes of Snakemake's object-storage plugins; a media path or input naming one is never a local file
SCHEMES = ("s3://", "gs://", "gcs://", "az://")
_CHUNK = 1 << 20


def is_url(path: str | os.PathLike | None) -> bool:
    return isinstance(path, str) and path.startswith(SCHEMES)


def join_url(root: str, path: str) -> str:
    """``path`` under the URL ``root``, ``..`` folded like a local path (``s3://b/a`` + ``x/../y.mp4``)."""
    scheme, rest = root.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"


def sibling(url: str, name: str) -> str:
    """``name`` in the folder of ``url`` (the provenance file beside an output on object storage)."""
    return f"{url.rsplit('/', 1)[0]}/{name}"


def content_identity(url: str, local_path: str | os.PathLike) -> list:
    """What a staged media file is, for the frame cache: its URL, size and sha256. Snakemake's local copy
    gets a new mtime at each retrieval (and is deleted after the job), so the stat identity the cache
    uses for local media would miss on every rerun; hashing costs a read (docs/object-storage.md)."""
    digest = hashlib.sha256()
    size = 0
    with open(local_path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return [url, size, digest.hexdigest()]


def _run(coroutine):
    """Await a storage plugin's coroutine from plain code: the Snakefile's parse has no event loop, its
    input functions run inside Snakemake's (there, in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def retrieve(storage_file) -> str:
    """Local copy of a file marked by Snakemake's ``storage(url)``, fetched now if missing or older than
    the object (the records file: shards are written while the workflow is parsed, before any job)."""
    obj = storage_file.flags["storage_object"]
    local = obj.local_path()

    async def fetch() -> None:
        if not await obj.managed_exists():
            raise FileNotFoundError(f"{obj.print_query} does not exist")
        if not local.exists() or local.stat().st_mtime < await obj.managed_mtime():
            await obj.managed_retrieve()

    _run(fetch())
    return str(local)


class _Listing:
    """The fields of Snakemake's IO cache that a storage plugin's ``inventory()`` fills."""

    def __init__(self) -> None:
        self.exists_local: dict = {}
        self.exists_in_storage: dict = {}
        self.mtime: dict = {}
        self.size: dict = {}
        self.checksum: dict = {}


_FOLDERS: dict[str, dict] = {}  # folder URL -> what its listing found (once per planning process)


def existing(storage_files: list) -> list[str]:
    """The URLs of the files (marked by ``storage(url)``) whose objects exist. A missing medium is its record's error,
    as for local files, instead of a missing input that stops the whole build; the plugin lists each
    folder once (a thousand objects per request) instead of one request per object."""
    found = []
    for marked in storage_files:
        obj = marked.flags["storage_object"]
        folder = obj.query.rsplit("/", 1)[0]
        if folder not in _FOLDERS:
            listing = _Listing()
            _run(obj.inventory(listing))
            _FOLDERS[folder] = listing.exists_in_storage
        known = _FOLDERS[folder].get(obj.cache_key())
        if known or (known is None and obj.exists()):
            found.append(obj.query)
    return found
