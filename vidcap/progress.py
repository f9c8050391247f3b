"""How far a build has got: records captioned out of the total, records/s and an ETA for the whole build.

Everything is read from files the build writes, so ``python -m vidcap status`` works from any shell
while a build runs (also under Slurm, where the jobs run elsewhere) and after it ended:

- ``<results>/shards/.state.json``: records per shard (the total);
- ``<results>/captions/NNNN.stats.json``: a caption job that ended (its shard's records are done);
- ``<results>/captions/NNNN.progress.json``: a caption job in flight, ``{done, total, records, started,
  updated}`` (requests settled out of its requests, store hits included), rewritten whole every few
  seconds by :class:`JobProgress`;
- ``<results>/shards/.lock``: held by the build's Snakemake process while it lives; written when it
  claimed it, so its time is when the build started (vidcap.shard_lock).

The running build prints the same line as jobs end and every minute (:func:`start_reporter`, from the
Snakefile's ``onstart``). The line is drawn by tqdm's ``format_meter``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidcap.atomic import read_json, write_json
from vidcap.shard_lock import LOCK_FILE
from vidcap.shards import STATE_FILE, shard_ids

PROGRESS_SUFFIX = ".progress.json"
REPORT_SECONDS = 60.0  # a line at least this often while a build runs, besides one per ended caption job
POLL_SECONDS = 5.0


def progress_path(result_path: str | os.PathLike) -> Path:
    """Where the caption job writing ``result_path`` (captions/NNNN.jsonl) keeps its in-flight progress."""
    path = Path(result_path)
    return path.with_name(path.stem + PROGRESS_SUFFIX)


class JobProgress:
    """A caption job's in-flight progress file, rewritten whole (never torn) at most every ``every`` s."""

    def __init__(self, path: str | os.PathLike, total: int, records: int, base: int = 0, every: float = 10.0):
        """``total`` requests, ``base`` of them answered already (from the result store)."""
        self.path, self.total, self.records, self.base, self.every = Path(path), total, records, base, every
        self.started = time.time()
        self.written = 0.0
        self.update(0, force=True)

    def update(self, settled: int, force: bool = False) -> None:
        """``settled`` requests answered by the engine since the start."""
        now = time.time()
        if not force and now - self.written < self.every:
            return
        self.written = now
        state = {
            "done": min(self.base + settled, self.total),
            "total": self.total,
            "records": self.records,
            "started": self.started,
            "updated": now,
        }
        with contextlib.suppress(OSError):  # progress is for people: never fail a job over it
            write_json(self.path, state, indent=None, durable=False)


@dataclass
class BuildProgress:
    total: int = 0  # records of the build
    done: float = 0.0  # captioned (a running job's share estimated from its progress file)
    done_now: float = 0.0  # of those, captioned since the build started
    shards: int = 0
    shards_done: int = 0
    frames_done: int = 0
    running: list[str] = field(default_factory=list)  # caption jobs in flight
    started: float | None = None  # when the build (its Snakemake process) started
    active: bool = False  # that process still runs
    finished_at: float | None = None  # the last caption job's end
    found: bool = True  # whether the results folder holds a build at all
    results: str = ""

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        end = time.time() if self.active or self.finished_at is None else self.finished_at
        return max(end - self.started, 0.0)

    @property
    def rate(self) -> float | None:
        """Records per second of this build (records done before it started are not its work)."""
        return self.done_now / self.elapsed if self.done_now and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate and self.active else None


def build_progress(cfg: dict) -> BuildProgress:
    """The progress of the build that ``cfg`` (its whole config: vidcap.config.build_config) describes."""
    results = Path(str(cfg["results"]).rstrip("/"))
    shard_dir = results / "shards"
    progress = BuildProgress(results=str(results))
    try:
        counts = {sid: entry["records"] for sid, entry in read_json(shard_dir / STATE_FILE)["shards"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        progress.found = False
        return progress
    progress.started, progress.active = _build_started(shard_dir)
    ids = shard_ids(cfg["shards"])
    progress.shards = len(ids)
    for sid in ids:
        records = counts.get(sid, 0)
        progress.total += records
        _add_shard(progress, results, shard_dir / f"{sid}.jsonl", sid, records)
    return progress


def _add_shard(progress: BuildProgress, results: Path, shard_file: Path, sid: str, records: int) -> None:
    since = _mtime(shard_file) or 0.0  # results older than the shard file belong to its former records
    started = progress.started or 0.0
    if (_mtime(results / "frames" / f"{sid}.json") or 0) >= since:
        progress.frames_done += 1
    ended = _mtime(results / "captions" / f"{sid}.stats.json")
    state = _read_progress(results / "captions" / f"{sid}{PROGRESS_SUFFIX}")
    in_flight = state is not None and state["updated"] >= since and state["updated"] > (ended or 0) + 1
    if ended is not None and ended >= since and not (in_flight and progress.active):
        progress.done += records
        progress.shards_done += 1
        if ended >= started:
            progress.done_now += records
        progress.finished_at = max(progress.finished_at or 0.0, ended)
    elif in_flight:
        share = records * min(state["done"] / state["total"], 1.0) if state["total"] else 0.0
        progress.done += share
        if state["started"] >= started:
            progress.done_now += share
        if progress.active:
            progress.running.append(sid)


def _read_progress(path: Path) -> dict | None:
    try:
        state = read_json(path)
        return {k: float(state[k]) for k in ("done", "total", "started", "updated")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _build_started(shard_dir: Path) -> tuple[float | None, bool]:
    """When the last build claimed the shard lock, and whether it still holds it (a shared lock is
    refused while the build holds its exclusive one; taking it for a moment blocks nobody for long)."""
    path = shard_dir / LOCK_FILE
    started = _mtime(path)
    if started is None:
        return None, False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return started, False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return started, True
    finally:
        os.close(fd)  # closing drops a lock it took
    return started, False


def format_progress(progress: BuildProgress) -> str:
    """One line: records done/total (%), records/s, elapsed and ETA, and where the jobs are."""
    if not progress.found:
        return f"vidcap: no build in {progress.results} yet (its shards are written when snakemake starts)"
    from tqdm import tqdm

    line = tqdm.format_meter(
        n=round(progress.done),
        total=max(progress.total, 1),
        elapsed=progress.elapsed,
        unit=" records",
        rate=progress.rate or 0.0,  # not tqdm's n/elapsed: records of earlier builds are not this one's
        bar_format="{n_fmt}/{total_fmt} records captioned ({percentage:.0f}%), {rate_noinv_fmt}, "
        "elapsed {elapsed}, ETA {remaining}",
    )
    line = " ".join(line.split())  # tqdm pads the rate to a width
    if not progress.active:  # tqdm's remaining time is for a build still running
        line = line.rsplit(", ETA", 1)[0]
    shards = f"{progress.shards_done}/{progress.shards} shards captioned, {progress.frames_done} framed"
    running = f", {len(progress.running)} captioning now" if progress.running else ""
    state = "running" if progress.active else "finished" if progress.done >= progress.total else "not running"
    return f"vidcap: {line} [{shards}{running}; build {state}]"


def start_reporter(cfg: dict, stream=None, every: float = REPORT_SECONDS, poll: float = POLL_SECONDS):
    """A daemon thread of the build's own process: prints the progress line when a caption job ends and
    at least every ``every`` seconds. Returns a function that stops it and prints the last line."""
    stream = stream or sys.stderr
    stop = threading.Event()

    def loop() -> None:
        shown, last = -1, 0.0
        while not stop.wait(poll):
            with contextlib.suppress(Exception):  # a report must never disturb the build
                progress = build_progress(cfg)
                if progress.shards_done != shown or time.monotonic() - last >= every:
                    print(format_progress(progress), file=stream, flush=True)
                    shown, last = progress.shards_done, time.monotonic()

    thread = threading.Thread(target=loop, name="vidcap-progress", daemon=True)
    thread.start()

    def finish(ended: bool = False) -> None:
        """Stop the thread and print the last line (``ended``: the build is over, though this process
        still holds its lock)."""
        stop.set()
        thread.join(timeout=poll + 1)
        with contextlib.suppress(Exception):
            progress = build_progress(cfg)
            progress.active = progress.active and not ended
            print(format_progress(progress), file=stream, flush=True)

    return finish
