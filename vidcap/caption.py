"""Captioning one shard: read its records and frames, feed the engine a bounded window, write results.

Every record gets a status: ``ok``, ``truncated`` (the caption hit ``max_tokens``) or ``error`` with a
reason (its media failed, its prompt does not fit the context even with half the frames, or the engine
refused that request). Each request is first looked up in the result store (vidcap.store) by what its
answer depends on (vidcap.result_keys), and only the misses go to the engine; each answer is stored as
it is settled, so a killed job loses nothing it finished and a grown or resharded dataset sends only its
new records. An engine-level failure raises :class:`vidcap.engine.EngineFailure`: no result file is
written, so Snakemake retries the job. The result file has one line per shard record, in shard order,
and no timings, so rebuilds are byte-identical.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vidcap import audio_tokens, caption_set, engine_counters, native_audio, windowed
from vidcap.atomic import atomic_open, dumps_line, iter_jsonl, read_json, write_json
from vidcap.backends import Answer, OfflineBackend, ServerBackend
from vidcap.budget import geometry_for
from vidcap.config import with_defaults
from vidcap.engine import EngineFailure, is_too_long, start_engine, stop_engine
from vidcap.frames import ensure_frames
from vidcap.judge import Judge
from vidcap.progress import JobProgress, progress_path
from vidcap.prompts import Pending, chat_template, sampling_seed, unanswered_meta, vision_tokens
from vidcap.provenance import job_provenance, model_identity
from vidcap.records import record_digest, record_prompt
from vidcap.result_keys import caption_identity, content_digest, media_keys, record_key
from vidcap.settings import caption_params_of_job
from vidcap.store import ResultStore
from vidcap.transcript_prompt import Transcripts

PROGRESS_SECONDS = 10.0
# what a result line holds besides its answer: not stored (they name the record and the job, not the answer)
SET_KEY = "_set"  # [record slot, entry name] in a caption-set entry's own result, dropped by the fold
PLACE_FIELDS = ("digest", "keys", windowed.WINDOW_KEY, SET_KEY)
# this many failed answers before any success means the engine or server, not the records, is broken
# (e.g. a server that answers 404 to every request). Refusals at submission (a request the engine
# validates and rejects) and "too long" are the records' own and never count.
FAILURES_BEFORE_ANY_SUCCESS = 8


def caption_shard(
    shard_path: str, manifest_path: str, result_path: str, settings: dict, log=sys.stderr, llm=None
) -> dict:
    """Caption every record of a shard; write one JSONL line per record and a stats file beside it.

    ``settings["store"]``: the result store's folder (default: ``<result_path>.store``). ``llm``: an
    engine to reuse (tests, benchmarks); by default one is started on free GPU slots, and only when some
    request is not stored yet.
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
    # the workflow's is the build's (results/store); a direct call without one keeps its own beside the output
    store = ResultStore(settings.get("store") or f"{result_path}.store")
    model_id = model_identity(settings["model"])
    identity = caption_identity(caption_params_of_job(settings), model_id)
    entries = caption_set.asks(settings, model_id)  # the visual caption-set entries, each asked per record
    transcripts = Transcripts.of_job(settings)  # audio.mode transcript only
    results, pending = plan_records(
        shard_path, manifest_path, settings, identity, store, transcripts, entries
    )
    # window and caption-set requests take slots after the records
    records = sum(1 for r in results if windowed.WINDOW_KEY not in r and SET_KEY not in r)
    carried = sum(1 for r in results[:records] if r["caption_meta"]["error"])
    pending, twins, stored = look_up(pending, results, store)
    stats = new_stats(records, stored)
    print(
        f"shard {Path(shard_path).stem}: {records} records, {len(pending)} requests to caption, "
        f"{stored} answered from the result store, {len(twins)} duplicates of other requests, "
        f"{carried} carried errors",
        file=log,
        flush=True,
    )
    if pending:
        job = JobProgress(progress_path(result_path), stored + len(pending) + len(twins), records, stored)
        caption_pending(pending, results, settings, stats, store, log, llm, job)
    else:  # nothing to send: the job still says what produced its results
        stats["provenance"] = job_provenance(settings, settings["engine"], settings.get("frames"))
    fill_twins(twins, results)
    results = caption_set.fold(results, records, entries, SET_KEY)
    results = windowed.fold(results, records)
    for slot in range(records) if transcripts else ():
        transcripts.annotate(slot, results[slot])
    with atomic_open(result_path) as handle:
        for result in results:
            handle.write(dumps_line(result))
    finish_stats(stats, results, started)
    if entries:
        stats["set"] = set_stats(results, entries)
    write_json(Path(result_path).with_suffix(".stats.json"), stats)
    print(
        f"shard {Path(shard_path).stem}: {stats['ok']} ok, {stats['truncated']} truncated, {stats['error']} "
        f"errors, {stats['output_tokens']} tokens in {stats['generate_seconds']:.1f} s of generate, "
        f"{stats['seconds']:.1f} s in all",
        file=log,
        flush=True,
    )
    return stats


def plan_records(
    shard_path: str,
    manifest_path: str,
    settings: dict,
    identity: str,
    store: ResultStore,
    transcripts: Transcripts | None = None,
    asks: list[caption_set.Ask] = (),
) -> tuple[list[dict], list[Pending]]:
    """One result per shard record (an error until captioned) and the requests to look up or send,
    each with its result-store key (``identity``: vidcap.result_keys.caption_identity); ``transcripts``
    adds each record's speech to its prompt; with caption-set entries (``asks``), each record's entry
    requests come right after its own."""
    entries = read_json(manifest_path)["records"]
    results, pending, windows = [], [], []
    for slot, record in enumerate(iter_jsonl(shard_path)):
        if slot >= len(entries):
            raise RuntimeError(f"{manifest_path} has fewer entries than the shard's records: stale")
        entry, digest = entries[slot], record_digest(record)
        if entry["digest"] != digest:
            raise RuntimeError(f"{manifest_path}: entry {slot} belongs to another record: stale manifest")
        prompt = record_prompt(record, settings["keys"], settings["prompt"])
        if transcripts is not None and not windowed.is_windowed(entry):
            prompt = transcripts.prompt(slot, digest, prompt)
        # cache files deleted since the frames step: extracted again, unless the answer is stored
        if needs_frames(entry, settings, identity, prompt, store, asks):
            ensure_frames(entry, settings["frames_step"])
            if windowed.is_windowed(entry):
                windowed.ensure_windows(entry, settings["frames_step"])
            if native_audio.is_native(settings):
                native_audio.ensure(entry)
        frames = sum(len(v["meta"].get("frames_indices", ())) for v in entry["videos"] if "meta" in v)
        results.append(
            {
                "digest": digest,
                "caption": None,
                "caption_meta": unanswered_meta(frames, entry["error"]),
                "keys": [],
            }
        )
        if native_audio.is_native(settings) and not entry["error"] and native_audio.note(entry):
            results[slot]["caption_meta"]["audio"] = native_audio.note(entry)  # captioned from frames alone
        if not entry["error"]:
            seed = sampling_seed(settings["sampling"], content_digest(media_keys(entry), prompt))
            if windowed.is_windowed(entry):  # one request per window, in result slots after the records
                windows.append((slot, digest, entry, prompt, seed))
                continue
            item = Pending(slot, digest, entry, prompt, seed, keep=[None] * len(entry["videos"]))
            item.key = record_key(identity, prompt, entry)
            results[slot]["keys"].append(item.key)
            pending.append(item)
    if len(results) != len(entries):
        raise RuntimeError(
            f"{manifest_path} has {len(entries)} entries for {len(results)} shard records: stale"
        )
    for args in windows:
        timed = settings.get("output_format") == "json"
        heard = transcripts.for_window(*args[:2]) if transcripts is not None else None
        pending.extend(
            windowed.window_requests(*args, results, identity, settings.get("model"), timed, heard)
        )
    if asks:
        pending = with_set_requests(pending, results, entries, settings, asks)
    return results, pending


def with_set_requests(
    pending: list[Pending], results: list[dict], entries: list[dict], settings: dict, asks
) -> list[Pending]:
    """Every record gets a result slot per caption-set entry (after all other slots); each record that is
    asked gets one request per entry, placed right after its own request, so a record's requests reach
    the engine together and share its video's prefix-cache blocks and encoder output. A windowed record
    is asked each entry per window instead, right after that window's own request; its entry slot is
    filled from the window answers when the results are folded (vidcap.caption_set.fold)."""
    followers: dict[tuple, list[Pending]] = {}
    for slot, entry in enumerate(entries):
        record = results[slot]
        for ask in asks:
            meta = unanswered_meta(record["caption_meta"]["frames"], entry["error"])
            results.append(
                {"digest": record["digest"], "caption": None, "caption_meta": meta, SET_KEY: [slot, ask.name]}
            )
            if entry["error"]:
                continue
            seed = sampling_seed(ask.sampling, content_digest(media_keys(entry), ask.prompt))
            if windowed.is_windowed(entry):
                for item in entry_window_requests(slot, record, entry, ask, seed, results, settings):
                    followers.setdefault((slot, item.window), []).append(item)
                continue
            keep = [None] * len(entry["videos"])
            item = Pending(len(results) - 1, record["digest"], entry, ask.prompt, seed, keep=keep, ask=ask)
            item.key = record_key(ask.identity, ask.prompt, entry)
            record["keys"].append(item.key)
            followers.setdefault((slot, None), []).append(item)
    ordered = []
    for item in pending:
        ordered.append(item)
        place = results[item.slot].get(windowed.WINDOW_KEY)  # a window's [record slot, window number]
        ordered.extend(followers.get(tuple(place) if place else (item.slot, None), ()))
    return ordered


def entry_window_requests(slot, record, entry, ask, seed, results, settings) -> list[Pending]:
    """A caption-set entry's requests for a windowed record: one per window, as the primary's (its clip
    phrase, its clock), keyed by the entry's own settings (``ask.identity``)."""
    timed = ask.judge.json
    return windowed.window_requests(
        slot,
        record["digest"],
        entry,
        ask.prompt,
        seed,
        results,
        ask.identity,
        settings.get("model"),
        timed,
        ask=ask,
        marker=SET_KEY,
    )


def needs_frames(
    entry: dict, settings: dict, identity: str, prompt: str, store: ResultStore, asks=()
) -> bool:
    """Whether a record's frames must be on disk: it will be sent (a stored answer needs none, so a
    pruned cache is not extracted again for it). Windowed records are checked per window later."""
    if not settings.get("frames_step") or entry["error"]:
        return False
    keys = [record_key(identity, prompt, entry)] + [record_key(a.identity, a.prompt, entry) for a in asks]
    return windowed.is_windowed(entry) or not all(store.has(k) for k in keys)


def look_up(pending: list[Pending], results: list[dict], store: ResultStore):
    """Fill the results the store holds; return the requests left to send, the duplicates among them
    (sent once, copied after: [(request, the one sent)]) and how many came from the store."""
    left, twins, first = [], [], {}
    stored = 0
    for item in pending:
        value = store.get(item.key)
        if value is not None:
            fill(results, item.slot, value)
            stored += 1
        elif item.key in first:
            twins.append((item, first[item.key]))
        else:
            first[item.key] = item
            left.append(item)
    return left, twins, stored


def fill(results: list[dict], slot: int, value: dict) -> None:
    """An answer into a result slot, keeping the slot's own record digest, keys and window place, in the
    key order a fresh answer has (the result file's bytes do not say where an answer came from)."""
    results[slot].update(copy.deepcopy(value))


def answer_of(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in PLACE_FIELDS}


def fill_twins(twins: list, results: list[dict]) -> None:
    for item, sent in twins:
        fill(results, item.slot, answer_of(results[sent.slot]))


def new_stats(records: int, stored: int) -> dict:
    return {
        "records": records,
        "ok": 0,
        "truncated": 0,
        "degenerate": 0,
        "error": 0,
        "halved": 0,
        "retries": 0,
        "stored": stored,  # requests answered from the result store, not sent
        "requests": 0,
        "prompt_tokens": 0,
        "output_tokens": 0,
        "engine_seconds": 0.0,
        "generate_seconds": 0.0,
        "prepare_seconds": 0.0,
        "tokens_per_second": None,
        "vllm": engine_counters.empty(),  # the engine's own counts (vidcap.engine_counters)
    }


def finish_stats(stats: dict, results: list[dict], started: float) -> None:
    for result in results:
        stats[result["caption_meta"]["status"]] += 1
    if stats["generate_seconds"]:
        stats["tokens_per_second"] = round(stats["output_tokens"] / stats["generate_seconds"], 1)
    stats["seconds"] = round(time.monotonic() - started, 3)


def caption_pending(pending, results, settings, stats, store, log, llm=None, job_progress=None) -> None:
    """Start (or reuse) the engine, caption ``pending`` (each answer stored as it is settled); an engine
    failure propagates, the result file unwritten."""
    from vidcap.gpus import device_slots

    engine = settings["engine"]
    judge = Judge(settings)
    n = settings["candidates"]["n"]
    with contextlib.ExitStack() as stack:
        # hashing the model folder and asking ffmpeg its version overlap with engine start and generate
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        provenance = pool.submit(job_provenance, settings, engine, settings.get("frames"))
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
                stack.callback(stop_engine, llm, log)  # before the slot is freed (LIFO): memory first
            backend = OfflineBackend(llm, settings["sampling"], engine, log, n, judge.schema)
            stack.callback(backend.close)
            ready = fit_to_context(llm, pending, results, settings, store)
            counters = engine_counters.EngineCounters(llm)
            stack.callback(lambda: stats.update(vllm=counters.read()))
        feed(backend, ready, results, stats, store, log, judge, job_progress)
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
    if native_audio.is_native(settings):  # each video's own audio track goes with it
        limits["audio"] = limits["video"]
    t0 = time.monotonic()
    llm = start_engine(model, engine, limits, int(settings["sampling"]["seed"] or 0))
    stats["engine_seconds"] = round(time.monotonic() - t0, 3)
    print(f"engine up in {stats['engine_seconds']:.1f} s ({model}, limits {limits})", file=log, flush=True)
    return llm


def fit_to_context(
    llm, pending: list[Pending], results: list[dict], settings: dict, store: ResultStore
) -> list[Pending]:
    """Render each record's chat text; halve the frames of prompts too long for the context, and fail
    (and store) those that do not fit even then (counted with the engine's own geometry and tokenizer)."""
    try:  # the config the engine already loaded
        hf_config = llm.llm_engine.model_config.hf_config
    except AttributeError:
        hf_config = None
    geometry = geometry_for(settings["model"], hf_config)
    tokenizer = llm.get_tokenizer()
    template = chat_template(settings["model"], tokenizer)
    max_model_len = settings["engine"]["max_model_len"]

    native = native_audio.is_native(settings)
    if native:
        audio_tokens.check_model(settings["model"], hf_config)
    chunk = audio_tokens.chunk_seconds_of(settings["model"]) if native else 0

    @functools.lru_cache(maxsize=4096)
    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def estimate(item: Pending) -> int:
        placeholders = len(item.entry["videos"]) + len(item.entry["images"])
        stamps = (lambda t: count_tokens(f"<{t:.1f} seconds>")) if geometry.tokens_per_frame_group else None
        seen = vision_tokens(item.entry, item.keep, geometry, stamps)
        heard = audio_tokens.request_tokens(item.entry, chunk) if native else 0  # halving keeps it whole
        return count_tokens(item.text) - placeholders + seen + heard

    ready = []
    for item in pending:
        asked = item.ask.settings if item.ask else settings  # a caption-set entry's own, or the job's
        max_tokens = int(asked["sampling"]["max_tokens"])
        budget = max_model_len - max_tokens  # the prompt must leave room for a whole caption
        item.text = template(
            asked["system_prompt"], len(item.entry["images"]), len(item.entry["videos"]), item.prompt
        )
        if estimate(item) > budget:
            item.halve()
        tokens = estimate(item)
        if tokens > budget:
            half = " with half the frames" if item.halved else ""
            reason = f"too long: {tokens} prompt tokens{half} exceed max_model_len {max_model_len} - max_tokens {max_tokens}"
            results[item.slot]["caption_meta"].update(error=reason, halved=item.halved)
            store.put(item.key, answer_of(results[item.slot]))
            continue
        ready.append(item)
    return ready


def feed(
    backend, ready, results: list[dict], stats: dict, store: ResultStore, log, judge: Judge, job_progress=None
) -> None:
    """Keep the backend's window full until every record has its answer or its error."""
    queue = deque()
    for item in ready:
        reason = backend.unsupported(item)
        if reason:
            results[item.slot]["caption_meta"]["error"] = reason
        else:
            queue.append(item)
    progress = Progress(len(queue), log, job_progress)
    breaker = Breaker()
    while queue or len(backend):
        while queue and backend.has_room(queue[0]):
            item = queue.popleft()
            stats["requests"] += 1
            try:
                backend.submit(item)
            except EngineFailure:
                raise
            except Exception as exc:  # refused while adding it: this request only
                settle(item, exc, results, stats, store, queue, judge)
        if len(backend):
            for item, outcome in backend.collect():
                breaker.check(outcome)
                settle(item, outcome, results, stats, store, queue, judge)
                progress.done(stats)
    progress.report(stats, final=True)


class Breaker:
    """Fails the job when the first answers the engine returns are all failures (see
    FAILURES_BEFORE_ANY_SUCCESS); one success disarms it for the rest of the job."""

    def __init__(self):
        self.failures, self.armed = 0, True

    def check(self, outcome) -> None:
        if not self.armed:
            return
        if isinstance(outcome, Answer):
            self.armed = False
        elif not is_too_long(outcome):
            self.failures += 1
            if self.failures >= FAILURES_BEFORE_ANY_SUCCESS:
                first_line = (str(outcome).splitlines() or [type(outcome).__name__])[0][:300]
                raise EngineFailure(f"the first {self.failures} answers all failed, e.g.: {first_line}")


def settle(item: Pending, outcome, results, stats, store: ResultStore, queue: deque, judge: Judge) -> None:
    """Record an answer, or a request's failure: once more with half the frames if it was too long, or
    with a new seed if every candidate was degenerate (``judge``). A refusal is that request's error,
    never the engine's: an engine that is broken raises EngineFailure from the backend instead."""
    judge = item.ask.judge if item.ask else judge  # a caption-set entry has its own format and guard
    meta = results[item.slot]["caption_meta"]
    meta["seed"] = item.first_seed
    if isinstance(outcome, Answer):
        count_tokens(outcome, stats)
        duration = windowed.answer_duration(item)  # a window's clock: its events in the video's time
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
        return  # a refusal is not kept: it may pass with nothing changed, so the next build asks again
    store.put(item.key, answer_of(results[item.slot]))


def set_stats(results: list[dict], asks) -> dict:
    """Per caption-set entry: how many records got each status."""
    out = {a.name: {"ok": 0, "truncated": 0, "degenerate": 0, "error": 0} for a in asks}
    for result in results:
        for name, meta in result["caption_meta"]["set"].items():
            out[name][meta["status"]] += 1
    return out


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
    """A whole line every few seconds in the job's log: done/total, rate, ETA; and the same count in the
    job's progress file (vidcap.progress.JobProgress), which ``vidcap status`` reads."""

    def __init__(self, total: int, log, job_progress=None):
        self.total, self.log, self.count, self.job_progress = total, log, 0, job_progress
        self.started = self.last = time.monotonic()

    def done(self, stats: dict) -> None:
        self.count += 1
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.report(stats)

    def report(self, stats: dict, final: bool = False) -> None:
        self.last = time.monotonic()
        if self.job_progress is not None:
            self.job_progress.update(self.count, force=final)
        elapsed = max(self.last - self.started, 1e-6)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate else 0.0
        print(
            f"{'captioned' if final else 'progress'} {self.count}/{self.total} ({rate:.2f} records/s, "
            f"{stats['output_tokens'] / elapsed:.1f} output tokens/s, eta {eta:.0f} s)",
            file=self.log,
            flush=True,
        )
