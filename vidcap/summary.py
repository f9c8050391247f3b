"""The summary step: the window captions of a long video, in time order, into one caption.

Reads a shard's caption results and writes the same lines, in the same order, with every record of
two or more windows given ``caption`` = a text-only answer of the summary model (the captioning
model, used as a text model, unless long_video.summary_model names another) and
``caption_meta.summary`` = its status and tokens. Other records pass through unchanged. Each summary
is kept in the result store (vidcap.store) under its settings and the exact text it is asked, which
holds the window captions, so a shard without new summaries to write starts no engine, and two records
of the same video share one request. A record whose summary fails (its prompt too long, a request
refused) is an error with the reason; an engine failure raises, so no file is written and Snakemake
retries the job.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time

from vidcap.atomic import atomic_open, dumps_line, iter_jsonl
from vidcap.config import with_defaults
from vidcap.engine import EngineFailure, start_engine, stop_engine
from vidcap.prompts import chat_template, sampling_seed
from vidcap.provenance import model_identity
from vidcap.redact import redact_url
from vidcap.result_keys import content_digest, summary_identity, summary_key
from vidcap.store import ResultStore, storable

SUMMARY_PARAM_KEYS = ("model", "prompt", "system_prompt", "sampling", "max_model_len", "engine_numerics")


def needs_summary(result: dict) -> bool:
    meta = result["caption_meta"]
    return meta["status"] != "error" and len(meta.get("windows") or ()) >= 2


def summary_text(prompt: str, windows: list[dict]) -> str:
    """The summary instruction, then each captioned window as "From a s to b s: caption", in time order."""
    lines = [prompt, ""]
    for window in sorted(windows, key=lambda w: w["start"]):
        if window["caption"] is not None and window["status"] != "error":
            lines.append(
                f"From {window['start']:.1f} s to {window['end']:.1f} s: {window['caption'].strip()}"
                + (f" (speech: {window['speech']})" if window.get("speech") else "")  # audio.mode transcript
            )
    return "\n".join(lines)


def summarize_shard(captions_path: str, out_path: str, settings: dict, log=sys.stderr, llm=None) -> dict:
    """Write ``out_path``: the caption results with summaries; returns counts of what was done."""
    started = time.monotonic()
    settings = {**settings, "sampling": with_defaults("sampling", settings.get("sampling"))}
    store = ResultStore(settings.get("store") or f"{out_path}.store")
    identity = None
    answers: dict[str, dict] = {}
    todo = {}  # summary key -> a record asking it (records of one video ask one summary)
    asked = []  # each long record's summary key, in file order (32 characters each), for the write pass
    for result in iter_jsonl(captions_path):
        if needs_summary(result):
            if identity is None:  # hashing the model's files only for a shard with summaries
                params = {k: settings.get(k) for k in SUMMARY_PARAM_KEYS}
                identity = summary_identity(params, model_identity(settings["model"]))
            key = summary_key(identity, summary_text(settings["prompt"], result["caption_meta"]["windows"]))
            asked.append(key)
            stored = answers.get(key) or store.get(key)
            if stored is not None:
                answers[key] = stored
            else:
                todo[key] = result
    if todo:
        for key, answer in summarize(todo, settings, log, llm).items():
            answers[key] = answer
            if storable(answer):
                store.put(key, answer)
    counts = {"records": 0, "summarized": 0, "summary_errors": 0, "stored": len(answers) - len(todo)}
    keys = iter(asked)
    with atomic_open(out_path) as handle:
        for result in iter_jsonl(captions_path):  # streamed again: one line in memory at a time
            counts["records"] += 1
            if needs_summary(result):
                key = next(keys)
                apply_summary(result, copy.deepcopy(answers[key]))
                result.setdefault("keys", []).append(key)
                counts["summarized" if result["caption_meta"]["status"] != "error" else "summary_errors"] += 1
            handle.write(dumps_line(result))
    print(
        f"{counts['records']} records, {counts['summarized']} summarised ({counts['stored']} distinct "
        f"summaries from the result store, {len(todo)} asked), {counts['summary_errors']} summary errors, "
        f"{time.monotonic() - started:.1f} s",
        file=log,
        flush=True,
    )
    return counts


def apply_summary(result: dict, answer: dict) -> None:
    meta = result["caption_meta"]
    meta["summary"] = answer
    result["caption"] = answer.get("text")
    meta["status"], meta["finish_reason"] = answer["status"], answer["finish_reason"]
    meta["error"] = None if answer["status"] != "error" else f"summary: {answer['error']}"
    answer.pop("text", None)


def summarize(todo: dict[str, dict], settings: dict, log, llm=None) -> dict[str, dict]:
    """{summary key: {text, status, error, prompt_tokens, output_tokens, finish_reason}} for ``todo``
    ({summary key: a caption result asking it}).

    Text prompts are small (a few hundred tokens per window caption), so the shard's summaries go to
    the engine as one ``generate`` call.
    """
    from vidcap.gpus import device_slots

    engine = with_defaults("engine", settings.get("engine"))
    if engine["backend"] == "server":
        return via_server(todo, settings, engine)
    with contextlib.ExitStack() as stack:
        if llm is None:
            stack.enter_context(
                device_slots(engine["tensor_parallel_size"], timeout=engine["gpu_wait_timeout"], log=log)
            )
            t0 = time.monotonic()
            llm = start_engine(
                settings["model"], engine, {"video": 0, "image": 0}, int(settings["sampling"]["seed"] or 0)
            )
            stack.callback(stop_engine, llm, log)  # before the slot is freed (LIFO): memory first
            print(
                f"engine up in {time.monotonic() - t0:.1f} s ({settings['model']}, text only)",
                file=log,
                flush=True,
            )
        return generate(llm, todo, settings)


def generate(llm, todo: dict[str, dict], settings: dict) -> dict[str, dict]:
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    template = chat_template(settings["model"], tokenizer)
    s = settings["sampling"]
    room = settings["max_model_len"] - int(s["max_tokens"])
    answers, prompts, params, keys = {}, [], [], []
    for key, result in todo.items():
        question = summary_text(settings["prompt"], result["caption_meta"]["windows"])
        text = template(settings["system_prompt"], 0, 0, question)
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        if tokens > room:
            answers[key] = failed(
                f"too long: {tokens} prompt tokens exceed max_model_len - max_tokens {room}"
            )
            continue
        prompts.append(text)
        keys.append(key)
        params.append(
            SamplingParams(
                temperature=s["temperature"],
                top_p=s["top_p"],
                top_k=s["top_k"] or 0,
                presence_penalty=s["presence_penalty"],
                repetition_penalty=s["repetition_penalty"],
                min_tokens=min(s["min_tokens"], s["max_tokens"]),
                max_tokens=s["max_tokens"],
                seed=sampling_seed(s, content_digest([], question)),  # not the record's place or backend
            )
        )
    if prompts:
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:  # the prompts were checked for length: a failure here is the engine's
            raise EngineFailure(f"summary engine failed: {type(exc).__name__}: {exc}") from exc
        for key, output in zip(keys, outputs):
            completion = output.outputs[0]
            answers[key] = {
                "text": completion.text,
                "status": "truncated" if completion.finish_reason == "length" else "ok",
                "error": None,
                "prompt_tokens": len(output.prompt_token_ids),
                "output_tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
            }
    return answers


def via_server(todo: dict[str, dict], settings: dict, engine: dict) -> dict[str, dict]:
    """The summaries through an OpenAI-compatible ``vllm serve`` (engine.backend server) of the summary model:
    ``served_name`` (summary_model, else engine.served_model, else model). A request the server refuses
    (4xx: e.g. too long) is that record's error; an unreachable or failing server (5xx, or a refused API key)
    fails the job."""
    from vidcap import server

    if not server.server_ready(engine["url"], timeout=min(30.0, engine["request_timeout"])):
        raise EngineFailure(f"server unreachable at {redact_url(engine['url'])} (no answer on /health)")
    s = settings["sampling"]
    bodies = []
    for result in todo.values():
        text = summary_text(settings["prompt"], result["caption_meta"]["windows"])
        body = server.chat_body(
            settings["served_name"],
            settings["system_prompt"],
            text,
            [],
            None,
            s,
            sampling_seed(s, content_digest([], text)),
        )
        body.pop("mm_processor_kwargs")  # a text prompt: nothing to resize
        bodies.append(body)
    replies = server.run_bodies(engine, bodies)
    answers = {}
    for key, reply in zip(todo, replies):
        if isinstance(reply, server.ServerError):
            if server.engine_level(reply.status):
                raise EngineFailure(str(reply))
            answers[key] = failed(str(reply))
            continue
        choice, usage = reply["choices"][0], reply.get("usage") or {}
        answers[key] = {
            "text": choice["message"]["content"],
            "status": "truncated" if choice["finish_reason"] == "length" else "ok",
            "error": None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "output_tokens": usage.get("completion_tokens"),
            "finish_reason": choice["finish_reason"],
        }
    return answers


def failed(reason: str) -> dict:
    return {
        "text": None,
        "status": "error",
        "error": reason,
        "prompt_tokens": None,
        "output_tokens": None,
        "finish_reason": None,
    }
