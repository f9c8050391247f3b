"""Captioning one shard: read its records and frames, feed the engine a bounded window, write results.

Every record gets a status: ``ok``, ``truncated`` (the caption hit ``max_tokens``) or ``error`` with a
reason (its media failed, its prompt does not fit the context even with half the frames, or the engine
refused that request). An engine-level failure raises :class:`vidcap.engine.EngineFailure` instead:
no result file is written, so Snakemake retries the job, and the journal (vidcap.journal) makes the
retry caption only what was not finished. The result file has one line per shard record, in shard
order, and no timings, so rebuilds are byte-identical.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vidcap import windowed
from vidcap.atomic import atomic_open, dumps_line, iter_jsonl, read_json, write_json
from vidcap.backends import Answer, OfflineBackend, ServerBackend
from vidcap.budget import geometry_for
from vidcap.config import with_defaults
from vidcap.engine import EngineFailure, is_too_long, start_engine
from vidcap.frames import ensure_frames
from vidcap.journal import Journal, journal_path, record_key
from vidcap.judge import Judge
from vidcap.prompts import Pending, chat_template, sampling_seed, unanswered_meta, vision_tokens
from vidcap.provenance import canonical_hash
from vidcap.records import record_digest, record_prompt

PROGRESS_SECONDS = 10.0
# this many request-level failures before any success means the engine, not the records, is broken
FAILURES_BEFORE_ANY_SUCCESS = 8


def caption_shard(
    shard_path: str, manifest_path: str, result_path: str, settings: dict, log=sys.stderr, llm=None
) -> dict:
    """Caption every record of a shard; write one JSONL line per record and a stats file beside it.

    ``llm``: an engine to reuse (tests, benchmarks); by default one is started on free GPU slots.
    """
    started = time.monotonic()
    settings = {
        **settings,
        "keys": with_defaults("keys", settings.get("keys")),
        "sampling": with_defaults("sampling", settings.get("sampling")),
        "engine": with_defaults("engine", settings.get("engine")),
        "candidates": with_defaults("candidates", settings.get("candidates")),
        "quality": with_defaults("quality", settings.get("quality")),
    }
    results, pending = plan_records(shard_path, manifest_path, settings)
    records = sum(1 for r in results if windowed.WINDOW_KEY not in r)  # window requests take slots after
    carried = sum(1 for r in results[:records] if r["caption_meta"]["error"])
    journal = Journal(journal_path(result_path))
    pending, resumed = resume(pending, results, journal, settings)
    stats = new_stats(records, resumed)
    print(
        f"shard {Path(shard_path).stem}: {records} records, {len(pending)} requests to caption, "
        f"{stats['resumed']} finished by an earlier attempt, "
        f"{carried} carried errors",
        file=log,
        flush=True,
    )
    if pending:
        caption_pending(pending, results, settings, stats, journal, log, llm)
    results = windowed.fold(results, records)
    with atomic_open(result_path) as handle:
        for result in results:
            handle.write(dumps_line(result))
    journal.remove()
    finish_stats(stats, results, started)
    write_json(Path(result_path).with_suffix(".stats.json"), stats)
    print(
        f"shard {Path(shard_path).stem}: {stats['ok']} ok, {stats['truncated']} truncated, {stats['error']} "
        f"errors, {stats['output_tokens']} tokens in {stats['generate_seconds']:.1f} s of generate, "
        f"{stats['seconds']:.1f} s in all",
        file=log,
        flush=True,
    )
    return stats


def plan_records(shard_path: str, manifest_path: str, settings: dict) -> tuple[list[dict], list[Pending]]:
    """One result per shard record (an error until captioned) and the records to send to the engine."""
    entries = read_json(manifest_path)["records"]
    results, pending, windows = [], [], []
    for slot, record in enumerate(iter_jsonl(shard_path)):
        if slot >= len(entries):
            raise RuntimeError(f"{manifest_path} has fewer entries than the shard's records: stale")
        entry, digest = entries[slot], record_digest(record)
        if entry["digest"] != digest:
            raise RuntimeError(f"{manifest_path}: entry {slot} belongs to another record: stale manifest")
        if settings.get("frames_step") and not entry["error"]:  # cache files deleted since the frames step
            ensure_frames(entry, settings["frames_step"])
            if windowed.is_windowed(entry):
                windowed.ensure_windows(entry, settings["frames_step"])
        frames = sum(len(v["meta"].get("frames_indices", ())) for v in entry["videos"] if "meta" in v)
        results.append(
            {"digest": digest, "caption": None, "caption_meta": unanswered_meta(frames, entry["error"])}
        )
        if not entry["error"]:
            prompt = record_prompt(record, settings["keys"], settings["prompt"])
            seed = sampling_seed(settings["sampling"], digest)
            if windowed.is_windowed(entry):  # one request per window, in result slots after the records
                windows.append((slot, digest, entry, prompt, seed))
                continue
            pending.append(Pending(slot, digest, entry, prompt, seed, keep=[None] * len(entry["videos"])))
    if len(results) != len(entries):
        raise RuntimeError(
            f"{manifest_path} has {len(entries)} entries for {len(results)} shard records: stale"
        )
    for args in windows:
        pending.extend(windowed.window_requests(*args, results))
    return results, pending


def settings_hash(settings: dict) -> str:
    keys = ("model", "prompt", "system_prompt", "keys", "sampling", "max_model_len")
    keys += ("candidates", "quality", "output_format", "output_schema")
    return canonical_hash({k: settings.get(k) for k in keys})


def resume(pending: list[Pending], results: list[dict], journal: Journal, settings: dict):
    """Take the results an earlier attempt of this job finished; return the records still to caption
    and how many were taken."""
    digest_of = settings_hash(settings)
    left = []
    for item in pending:
        item.key = record_key(digest_of, item.digest, item.entry)
        if item.key in journal.done:
            results[item.slot] = journal.done[item.key]
        else:
            left.append(item)
    return left, len(pending) - len(left)


def new_stats(records: int, resumed: int) -> dict:
    return {
        "records": records,
        "ok": 0,
        "truncated": 0,
        "degenerate": 0,
        "error": 0,
        "halved": 0,
        "retries": 0,
        "resumed": resumed,
        "requests": 0,
        "prompt_tokens": 0,
        "output_tokens": 0,
        "engine_seconds": 0.0,
        "generate_seconds": 0.0,
        "prepare_seconds": 0.0,
        "tokens_per_second": None,
    }


def finish_stats(stats: dict, results: list[dict], started: float) -> None:
    for result in results:
        stats[result["caption_meta"]["status"]] += 1
    if stats["generate_seconds"]:
        stats["tokens_per_second"] = round(stats["output_tokens"] / stats["generate_seconds"], 1)
    stats["seconds"] = round(time.monotonic() - started, 3)


def caption_pending(pending, results, settings, stats, journal, log, llm=None) -> None:
    """Start (or reuse) the engine, caption ``pending``; an engine failure propagates, results unwritten."""
    from vidcap.gpus import device_slots
    from vidcap.provenance import job_provenance

    engine = settings["engine"]
    judge = Judge(settings)
    n = settings["candidates"]["n"]
    with contextlib.ExitStack() as stack:
        # hashing the model folder and asking ffmpeg its version overlap with engine start and generate
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        provenance = pool.submit(job_provenance, settings, engine, settings.get("frames"))
        stack.callback(journal.close)
        if engine["backend"] == "server":
            backend = ServerBackend(
                settings["model"], settings["system_prompt"], settings["sampling"], engine, n, judge.schema
            )
            stack.callback(backend.close)
            ready = pending
        else:
            if llm is None:
                stats["devices"] = stack.enter_context(
                    device_slots(engine["tensor_parallel_size"], timeout=engine["gpu_wait_timeout"], log=log)
                )
                llm = start_logged(settings, pending, stats, log)
            backend = OfflineBackend(llm, settings["sampling"], engine, log, n, judge.schema)
            stack.callback(backend.close)
            ready = fit_to_context(llm, pending, results, settings)
        feed(backend, ready, results, stats, journal, log, judge)
        stats["prepare_seconds"] = round(backend.prepare_seconds, 3)
        stats["generate_seconds"] = round(backend.engine_seconds, 3)
        t0 = time.monotonic()
        stats["provenance"] = provenance.result()
        stats["provenance_wait_seconds"] = round(time.monotonic() - t0, 3)


def start_logged(settings: dict, pending: list[Pending], stats: dict, log):
    model, engine = settings["model"], settings["engine"]
    limits = {
        "video": max(len(p.entry["videos"]) for p in pending),
        "image": max(len(p.entry["images"]) for p in pending),
    }
    t0 = time.monotonic()
    llm = start_engine(model, engine, limits, int(settings["sampling"]["seed"] or 0))
    stats["engine_seconds"] = round(time.monotonic() - t0, 3)
    print(f"engine up in {stats['engine_seconds']:.1f} s ({model}, limits {limits})", file=log, flush=True)
    return llm


def fit_to_context(llm, pending: list[Pending], results: list[dict], settings: dict) -> list[Pending]:
    """Render each record's chat text; halve the frames of prompts too long for the context, and fail
    those that do not fit even then (counted with the engine's own geometry and tokenizer)."""
    try:  # the config the engine already loaded
        hf_config = llm.llm_engine.model_config.hf_config
    except AttributeError:
        hf_config = None
    geometry = geometry_for(settings["model"], hf_config)
    tokenizer = llm.get_tokenizer()
    template = chat_template(settings["model"], tokenizer)
    max_model_len, max_tokens = settings["engine"]["max_model_len"], int(settings["sampling"]["max_tokens"])
    budget = max_model_len - max_tokens  # the prompt must leave room for a whole caption

    @functools.lru_cache(maxsize=4096)
    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def estimate(item: Pending) -> int:
        placeholders = len(item.entry["videos"]) + len(item.entry["images"])
        stamps = (lambda t: count_tokens(f"<{t:.1f} seconds>")) if geometry.tokens_per_frame_group else None
        return count_tokens(item.text) - placeholders + vision_tokens(item.entry, item.keep, geometry, stamps)

    ready = []
    for item in pending:
        item.text = template(
            settings["system_prompt"], len(item.entry["images"]), len(item.entry["videos"]), item.prompt
        )
        if estimate(item) > budget:
            item.halve()
        tokens = estimate(item)
        if tokens > budget:
            half = " with half the frames" if item.halved else ""
            reason = f"too long: {tokens} prompt tokens{half} exceed max_model_len {max_model_len} - max_tokens {max_tokens}"
            results[item.slot]["caption_meta"].update(error=reason, halved=item.halved)
            continue
        ready.append(item)
    return ready


def feed(backend, ready, results: list[dict], stats: dict, journal: Journal, log, judge: Judge) -> None:
    """Keep the backend's window full until every record has its answer or its error."""
    queue = deque()
    for item in ready:
        reason = backend.unsupported(item)
        if reason:
            results[item.slot]["caption_meta"]["error"] = reason
        else:
            queue.append(item)
    progress = Progress(len(queue), log)
    failures = {"request": 0, "ok": 0}
    while queue or len(backend):
        while queue and backend.has_room(queue[0]):
            item = queue.popleft()
            stats["requests"] += 1
            try:
                backend.submit(item)
            except EngineFailure:
                raise
            except Exception as exc:  # refused while adding it: this request only
                settle(item, exc, results, stats, journal, queue, failures, judge)
        if len(backend):
            for item, outcome in backend.collect():
                settle(item, outcome, results, stats, journal, queue, failures, judge)
                progress.done(stats)
    progress.report(stats, final=True)


def settle(
    item: Pending, outcome, results, stats, journal, queue: deque, failures: dict, judge: Judge
) -> None:
    """Record an answer, or a request's failure: once more with half the frames if it was too long, or
    with a new seed if every candidate was degenerate (``judge``)."""
    meta = results[item.slot]["caption_meta"]
    meta["seed"] = item.first_seed
    if isinstance(outcome, Answer):
        failures["ok"] += 1
        count_tokens(outcome, stats)
        videos = item.entry["videos"]
        duration = float(videos[0]["meta"]["duration"]) if videos else None
        attempt = judge.check(item.seed, outcome.texts, outcome.finish_reasons, duration)
        verdict = judge.decide(item, attempt)
        if verdict.status == "retry":
            stats["retries"] += 1
            queue.appendleft(item)
            return
        record_answer(item, outcome, verdict, judge, results[item.slot], stats)
    elif is_too_long(outcome) and item.halve():
        queue.appendleft(item)
        return
    else:
        first_line = (str(outcome).splitlines() or [type(outcome).__name__])[0][:300]
        meta.update(
            error=f"{'too long' if is_too_long(outcome) else 'engine error'}: {first_line}",
            halved=item.halved,
        )
        failures["request"] += 1
        if failures["ok"] == 0 and failures["request"] >= FAILURES_BEFORE_ANY_SUCCESS:
            raise EngineFailure(f"the first {failures['request']} requests all failed, e.g.: {first_line}")
    journal.add(item.key, results[item.slot])


def count_tokens(answer: Answer, stats: dict) -> None:
    """Every answered request counts, re-sampled attempts included: they are GPU work too."""
    stats["prompt_tokens"] += answer.prompt_tokens or 0
    stats["output_tokens"] += answer.output_tokens or 0


def record_answer(item: Pending, answer: Answer, verdict, judge: Judge, result: dict, stats: dict) -> None:
    """Write the chosen caption; its tokens are the last request's (earlier attempts are in ``rejected``)."""
    meta = result["caption_meta"]
    result.update(judge.fields(verdict))
    meta.update(
        status=verdict.status,
        error=None,
        prompt_tokens=answer.prompt_tokens,
        output_tokens=answer.output_tokens,
        finish_reason=verdict.attempt.finish_reasons[verdict.chosen],
        **judge.meta(verdict, item.attempt + 1),
    )
    if item.halved:
        meta.update(frames=item.frames_sent(), halved=True)
        stats["halved"] += 1


class Progress:
    """A whole line every few seconds in the job's log: done/total, rate, ETA."""

    def __init__(self, total: int, log):
        self.total, self.log, self.count = total, log, 0
        self.started = self.last = time.monotonic()

    def done(self, stats: dict) -> None:
        self.count += 1
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.report(stats)

    def report(self, stats: dict, final: bool = False) -> None:
        self.last = time.monotonic()
        elapsed = max(self.last - self.started, 1e-6)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate else 0.0
        print(
            f"{'captioned' if final else 'progress'} {self.count}/{self.total} ({rate:.2f} records/s, "
            f"{stats['output_tokens'] / elapsed:.1f} output tokens/s, eta {eta:.0f} s)",
            file=self.log,
            flush=True,
        )
