"""Text-only requests to the summary engine: long videos' summaries and derived caption-set entries.

The summary engine is ``long_video.summary_model``, or the captioning model used as a text model. A request
is a system prompt, a user text and its sampling (with ``n`` candidates and, for a JSON answer, the schema
vLLM's structured outputs enforce). Text prompts are small, so a shard's requests go to an in-process
engine as one ``generate`` call, or to a ``vllm serve`` (engine.backend server) through its pool. A request
that does not fit the context or that the server refuses (4xx) is that request's error; an engine or
server failure raises :class:`vidcap.engine.EngineFailure`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from vidcap.config import with_defaults
from vidcap.engine import EngineFailure, start_engine, stop_engine
from vidcap.prompts import chat_template, sampling_seed
from vidcap.redact import redact_url
from vidcap.result_keys import content_digest


@dataclass
class TextRequest:
    system_prompt: str
    text: str
    sampling: dict  # a whole sampling section, max_tokens included
    seed: int | None = None
    n: int = 1
    schema: dict | None = None  # a JSON answer: the schema decoding must follow


def seeded_request(
    system_prompt: str, text: str, sampling: dict, n: int = 1, schema: dict | None = None
) -> TextRequest:
    """A text request whose seed comes from its text and the sampling seed, not from the record's place or
    the backend: one text always draws the same answer."""
    seed = sampling_seed(sampling, content_digest([], text))
    return TextRequest(system_prompt, text, sampling, seed, n, schema)


@dataclass
class TextAnswer:
    """One request's candidates in sample order, or its ``error``."""

    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None


def refused(reason: str) -> TextAnswer:
    return TextAnswer([], [], error=reason)


class TextEngine:
    """The summary engine of one job, started on first use (a shard whose answers are all stored starts
    none) and stopped when the job's ``with`` block ends. ``settings``: the summary job's (model,
    served_name, engine, max_model_len); ``llm``: an engine to reuse (tests)."""

    def __init__(self, settings: dict, log, llm=None):
        self.settings, self.log, self.llm = settings, log, llm
        self.engine = with_defaults("engine", settings.get("engine"))
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def answer(self, requests: dict) -> dict:
        """{key: TextAnswer} for ``requests`` ({key: TextRequest})."""
        if not requests:
            return {}
        if self.engine["backend"] == "server":
            return via_server(requests, self.settings, self.engine)
        if self.llm is None:
            self.llm = self._start(next(iter(requests.values())).sampling.get("seed"))
        return generate(self.llm, requests, self.settings)

    def _start(self, seed):
        from vidcap.gpus import device_slots

        engine, model = self.engine, self.settings["model"]
        self.stack.enter_context(
            device_slots(engine["tensor_parallel_size"], timeout=engine["gpu_wait_timeout"], log=self.log)
        )
        t0 = time.monotonic()
        llm = start_engine(model, engine, {"video": 0, "image": 0}, int(seed or 0))
        self.stack.callback(stop_engine, llm, self.log)  # before the slot is freed (LIFO): memory first
        print(f"engine up in {time.monotonic() - t0:.1f} s ({model}, text only)", file=self.log, flush=True)
        return llm


def sampling_params(request: TextRequest):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    s = request.sampling
    return SamplingParams(
        n=request.n,
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=s["top_k"] or 0,
        presence_penalty=s["presence_penalty"],
        repetition_penalty=s["repetition_penalty"],
        min_tokens=min(s["min_tokens"], s["max_tokens"]),
        max_tokens=s["max_tokens"],
        seed=request.seed,
        structured_outputs=None if request.schema is None else StructuredOutputsParams(json=request.schema),
    )


def generate(llm, requests: dict, settings: dict) -> dict:
    tokenizer = llm.get_tokenizer()
    template = chat_template(settings["model"], tokenizer)
    answers, prompts, params, keys = {}, [], [], []
    for key, request in requests.items():
        text = template(request.system_prompt, 0, 0, request.text)
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        room = settings["max_model_len"] - int(request.sampling["max_tokens"])
        if tokens > room:
            answers[key] = refused(
                f"too long: {tokens} prompt tokens exceed max_model_len - max_tokens {room}"
            )
            continue
        prompts.append(text)
        keys.append(key)
        params.append(sampling_params(request))
    if prompts:
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:  # the prompts were checked for length: a failure here is the engine's
            raise EngineFailure(f"text engine failed: {type(exc).__name__}: {exc}") from exc
        for key, output in zip(keys, outputs):
            completions = sorted(output.outputs, key=lambda c: c.index)
            answers[key] = TextAnswer(
                [c.text for c in completions],
                [c.finish_reason for c in completions],
                len(output.prompt_token_ids),
                sum(len(c.token_ids) for c in completions),
            )
    return answers


def via_server(requests: dict, settings: dict, engine: dict) -> dict:
    """The requests through an OpenAI-compatible ``vllm serve`` of the summary model (``served_name``)."""
    from vidcap import server

    if not server.server_ready(engine["url"], timeout=min(30.0, engine["request_timeout"])):
        raise EngineFailure(f"server unreachable at {redact_url(engine['url'])} (no answer on /health)")
    bodies = []
    for request in requests.values():
        body = server.chat_body(
            settings["served_name"],
            request.system_prompt,
            request.text,
            [],
            None,
            request.sampling,
            request.seed,
        )
        body.pop("mm_processor_kwargs")  # a text prompt: nothing to resize
        if request.n > 1:
            body["n"] = request.n
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "caption", "schema": request.schema},
            }
        bodies.append(body)
    replies = server.run_bodies(engine, bodies)
    answers = {}
    for key, reply in zip(requests, replies):
        if isinstance(reply, server.ServerError):
            if server.engine_level(reply.status):
                raise EngineFailure(str(reply))
            answers[key] = refused(str(reply))
            continue
        choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
        usage = reply.get("usage") or {}
        answers[key] = TextAnswer(
            [c["message"]["content"] or "" for c in choices],
            [c["finish_reason"] for c in choices],
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
        )
    return answers


def read_answer(answer: TextAnswer, keep: str = "first", schema: dict | None = None, duration=None) -> dict:
    """What a text answer becomes, as a short record's caption would: ``text`` (the chosen candidate, for a
    JSON answer its summary), ``status``, ``error`` and tokens; with ``keep: all`` every candidate in
    ``captions``; with a ``schema`` the chosen object in ``json`` (event times checked against
    ``duration``: seconds or a :class:`vidcap.structured.Clock`) and what was fixed in ``json_notes``.
    No candidate that parses: ``degenerate``, the first text kept and the reason in ``json_error``."""
    from vidcap.quality import choose
    from vidcap.structured import parse_answer, summary_of

    if answer.error is not None:
        return failed(answer.error)
    texts, parsed, reasons, notes = [], [], [], []
    for text, finish in zip(answer.texts, answer.finish_reasons):
        obj, reason, note = (None, None, [])
        if schema is not None:
            obj, reason, note = parse_answer(text, schema, duration)
            if reason and finish == "length":
                reason = "json: cut at max_tokens"
        texts.append(summary_of(obj) if obj is not None else text)
        parsed.append(obj)
        reasons.append(reason)
        notes.append(note)
    eligible = [r is None for r in reasons]
    chosen = choose(texts, keep, eligible)
    finish = answer.finish_reasons[chosen]
    status = "truncated" if finish == "length" else "ok"
    out = {"text": texts[chosen], "status": status if any(eligible) else "degenerate", "error": None}
    out.update(prompt_tokens=answer.prompt_tokens, output_tokens=answer.output_tokens, finish_reason=finish)
    if keep == "all":
        out["captions"] = texts
    if schema is not None:
        out["json"] = parsed[chosen]
        if notes[chosen]:
            out["json_notes"] = notes[chosen]
        if not any(eligible):
            out["json_error"] = reasons[chosen]
    return out


def failed(reason: str) -> dict:
    return {
        "text": None,
        "status": "error",
        "error": reason,
        "prompt_tokens": None,
        "output_tokens": None,
        "finish_reason": None,
    }
