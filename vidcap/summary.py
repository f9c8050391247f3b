"""The summary step: the window captions of a long video, in time order, into one caption.

Reads a shard's caption results and writes the same lines, in the same order, with every record of
two or more windows given ``caption`` = a text-only answer of the summary model (the captioning
model, used as a text model, unless long_video.summary_model names another) and
``caption_meta.summary`` = its status and tokens. Other records pass through unchanged, and a shard
without such records starts no engine. A record whose summary fails (its prompt too long, a request
refused) is an error with the reason; an engine failure raises, so no file is written and Snakemake
retries the job.
"""

from __future__ import annotations

import contextlib
import sys
import time

from vidcap.atomic import atomic_open, dumps_line, iter_jsonl
from vidcap.config import with_defaults
from vidcap.engine import EngineFailure, start_engine
from vidcap.prompts import chat_template, sampling_seed


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
            )
    return "\n".join(lines)


def summarize_shard(captions_path: str, out_path: str, settings: dict, log=sys.stderr, llm=None) -> dict:
    """Write ``out_path``: the caption results with summaries; returns counts of what was done."""
    started = time.monotonic()
    sampling = with_defaults("sampling", settings.get("sampling"))
    todo = [r for r in iter_jsonl(captions_path) if needs_summary(r)]
    answers: dict[str, dict] = {}
    if todo:
        answers = summarize(todo, {**settings, "sampling": sampling}, log, llm)
    counts = {"records": 0, "summarized": 0, "summary_errors": 0}
    with atomic_open(out_path) as handle:
        for result in iter_jsonl(captions_path):  # streamed again: one line in memory at a time
            counts["records"] += 1
            if needs_summary(result):
                apply_summary(result, answers[result["digest"]])
                counts["summarized" if result["caption_meta"]["status"] != "error" else "summary_errors"] += 1
            handle.write(dumps_line(result))
    print(
        f"{counts['records']} records, {counts['summarized']} summarised, {counts['summary_errors']} summary "
        f"errors, {time.monotonic() - started:.1f} s",
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


def summarize(todo: list[dict], settings: dict, log, llm=None) -> dict[str, dict]:
    """{digest: {text, status, error, prompt_tokens, output_tokens, finish_reason}} for ``todo``.

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
            print(
                f"engine up in {time.monotonic() - t0:.1f} s ({settings['model']}, text only)",
                file=log,
                flush=True,
            )
        return generate(llm, todo, settings)


def generate(llm, todo: list[dict], settings: dict) -> dict[str, dict]:
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    template = chat_template(settings["model"], tokenizer)
    s = settings["sampling"]
    room = settings["max_model_len"] - int(s["max_tokens"])
    answers, prompts, params, digests = {}, [], [], []
    for result in todo:
        text = template(
            settings["system_prompt"],
            0,
            0,
            summary_text(settings["prompt"], result["caption_meta"]["windows"]),
        )
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        if tokens > room:
            answers[result["digest"]] = failed(
                f"too long: {tokens} prompt tokens exceed max_model_len - max_tokens {room}"
            )
            continue
        prompts.append(text)
        digests.append(result["digest"])
        params.append(
            SamplingParams(
                temperature=s["temperature"],
                top_p=s["top_p"],
                top_k=s["top_k"] or 0,
                presence_penalty=s["presence_penalty"],
                repetition_penalty=s["repetition_penalty"],
                min_tokens=min(s["min_tokens"], s["max_tokens"]),
                max_tokens=s["max_tokens"],
                seed=sampling_seed(s, result["digest"]),
            )
        )
    if prompts:
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:  # the prompts were checked for length: a failure here is the engine's
            raise EngineFailure(f"summary engine failed: {type(exc).__name__}: {exc}") from exc
        for digest, output in zip(digests, outputs):
            completion = output.outputs[0]
            answers[digest] = {
                "text": completion.text,
                "status": "truncated" if completion.finish_reason == "length" else "ok",
                "error": None,
                "prompt_tokens": len(output.prompt_token_ids),
                "output_tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
            }
    return answers


def via_server(todo: list[dict], settings: dict, engine: dict) -> dict[str, dict]:
    """The summaries through an OpenAI-compatible ``vllm serve`` (engine.backend server) of the summary model:
    ``served_name`` (summary_model, else engine.served_model, else model). A request the server refuses
    (4xx: e.g. too long) is that record's error; an unreachable or failing server (5xx) fails the job."""
    from vidcap import server

    if not server.server_ready(engine["url"], timeout=min(30.0, engine["request_timeout"])):
        raise EngineFailure(f"server unreachable at {engine['url']} (no answer on /health)")
    s = settings["sampling"]
    bodies = []
    for result in todo:
        text = summary_text(settings["prompt"], result["caption_meta"]["windows"])
        body = server.chat_body(
            settings["served_name"],
            settings["system_prompt"],
            text,
            [],
            None,
            s,
            sampling_seed(s, result["digest"]),
        )
        body.pop("mm_processor_kwargs")  # a text prompt: nothing to resize
        bodies.append(body)
    replies = server.run_bodies(
        engine["url"], bodies, engine["concurrency"], engine["retries"], engine["request_timeout"]
    )
    answers = {}
    for result, reply in zip(todo, replies):
        if isinstance(reply, server.ServerError):
            if reply.status == 0 or reply.status >= 500:
                raise EngineFailure(str(reply))
            answers[result["digest"]] = failed(str(reply))
            continue
        choice, usage = reply["choices"][0], reply.get("usage") or {}
        answers[result["digest"]] = {
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
