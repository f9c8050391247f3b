"""Captioning through a running OpenAI-compatible ``vllm serve`` instead of an in-job engine.

The same pre-sampled frames go over HTTP, losslessly: each frame as a PNG inside vLLM's
``data:video/jpeg;base64,<frame>,<frame>,...`` form (its image loader decodes any format), with the
video metadata as per-request ``media_io_kwargs`` so the server keeps every frame and the model gets
the same time positions as offline. Requests go through the ``openai`` client (installed with vLLM),
with bounded concurrency. vidcap retries, not the client: connection failures, timeouts, 408, 429 and
5xx answers wait for the server's ``Retry-After`` when it gives one (the client would wait exactly that,
so every job told "1 s" would come back in the same instant: vidcap adds up to 25 % on top) or back off
1, 2, 4 ... s with jitter. Other 4xx answers are the record's error; a server unreachable or failing
after the retries is an engine failure (the job fails, Snakemake retries it).

The API key comes from the environment variable that ``engine.api_key_env`` names, read here and
handed to the client only: it is never logged, and the URL is shown redacted (vidcap.redact).
"""

from __future__ import annotations

import base64
import email.utils
import io
import math
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np

from vidcap.redact import redact_url

# the OpenAI chat fields the client takes as arguments; vLLM's own (top_k, media_io_kwargs...) go in extra_body
CHAT_FIELDS = ("model", "messages", "temperature", "top_p", "presence_penalty", "max_tokens", "seed", "n")
CHAT_FIELDS += ("response_format",)
RETRY_STATUSES = (408, 429)  # and every 5xx
MAX_RETRY_AFTER = 120.0  # s; a server asking for longer is not waited for (as the openai client does)
MAX_BACKOFF = 30.0


class ServerError(Exception):
    """The server rejected a request (HTTP status and its message)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def png_base64(frame: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_body(
    model: str, system_prompt: str, prompt: str, images: list, video, sampling: dict, seed: int | None
) -> dict:
    """One chat completion request: images first, then the video, then the text (as offline)."""
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64(image)}}
        for image in images
    ]
    body = {
        "model": model,
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "repetition_penalty": sampling["repetition_penalty"],
        "presence_penalty": sampling["presence_penalty"],
        "min_tokens": sampling["min_tokens"],
        "max_tokens": sampling["max_tokens"],
    }
    if sampling["top_k"]:
        body["top_k"] = sampling["top_k"]
    if seed is not None:
        body["seed"] = seed
    if video is not None:
        frames, metadata = video
        url = "data:video/jpeg;base64," + ",".join(png_base64(frame) for frame in frames)
        content.append({"type": "video_url", "video_url": {"url": url}})
        body["media_io_kwargs"] = {
            "video": {
                "num_frames": -1,
                "fps": metadata["fps"],
                "frames_indices": metadata["frames_indices"],
                "total_num_frames": metadata["total_num_frames"],
                "duration": metadata["duration"],
                "do_sample_frames": False,
            }
        }
    content.append({"type": "text", "text": prompt})
    body["mm_processor_kwargs"] = {"do_resize": False}  # frames come sized as planned, as offline
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    body["messages"] = messages
    return body


def api_key(engine: dict) -> str:
    """The key from the variable ``engine.api_key_env`` names. Without one, a placeholder: an unrelated
    OPENAI_API_KEY of the user's must not be sent to this server (the client would read it otherwise)."""
    name = engine.get("api_key_env")
    if not name:
        return "EMPTY"
    value = os.environ.get(name)
    if not value:
        raise ServerConfigError(
            f"engine.api_key_env is {name!r}, but that environment variable is not set (or empty) in this job"
        )
    return value


class ServerConfigError(RuntimeError):
    """The server settings cannot work (a named key variable is not set): no retry helps."""


def api_base(url: str) -> tuple[str, dict]:
    """The client's base URL (``url`` + /v1) and the query parameters of ``url``, which the client adds
    to every request (it would glue a query in the base URL to the path)."""
    parts = urlsplit(url.rstrip("/"))
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/v1", "", ""))
    return base, dict(parse_qsl(parts.query))


def make_client(engine: dict):
    try:
        import openai
    except ImportError:  # vLLM brings it; a machine that only sends requests may not have vLLM
        raise ServerConfigError("the server backend needs the openai package: pip install openai") from None

    base, query = api_base(engine["url"])
    return openai.OpenAI(
        base_url=base,
        api_key=api_key(engine),
        default_query=query or None,
        max_retries=0,  # vidcap's own retries: Retry-After with jitter (module docstring)
        timeout=engine["request_timeout"],
    )


def post_chat(client, body: dict, retries: int, url: str = "", sleep=time.sleep) -> dict:
    """One chat completion as a dict (the server's JSON); transient failures retried ``retries`` times."""
    import openai

    fields = {k: v for k, v in body.items() if k in CHAT_FIELDS}
    extra = {k: v for k, v in body.items() if k not in CHAT_FIELDS}
    for attempt in range(retries + 1):
        try:
            return client.chat.completions.create(**fields, extra_body=extra or None).model_dump()
        except openai.APIStatusError as exc:
            status = exc.status_code
            asked = retry_after(exc.response.headers)
            if not retryable(status, asked) or attempt == retries:
                raise ServerError(status, error_message(exc)) from None
        except openai.APIConnectionError as exc:  # refused, reset, timed out
            if attempt == retries:
                raise ServerError(0, f"server unreachable at {redact_url(url)}: {exc}") from None
            asked = None
        sleep(backoff(attempt, asked))
    raise AssertionError("unreachable")


def engine_level(status: int) -> bool:
    """A failure of the server or its settings, not of one record: unreachable (0), a refused key (401,
    403), 5xx after the retries. The job fails (no record is written as an error) and Snakemake retries."""
    return status == 0 or status in (401, 403) or status >= 500


def retryable(status: int, asked: float | None) -> bool:
    if asked is not None and asked > MAX_RETRY_AFTER:
        return False
    return status in RETRY_STATUSES or status >= 500


def retry_after(headers) -> float | None:
    """Seconds the server asks to wait: ``Retry-After`` as seconds or as an HTTP date; None if absent."""
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff(attempt: int, asked: float | None, rand=random.random) -> float:
    """Seconds before retry ``attempt + 1``: what the server asked plus 0-25 % (never sooner than asked,
    and jobs told the same moment do not all come back at once), else 1, 2, 4 ... s (at most 30) +-25 %."""
    if asked is not None:
        return asked * (1 + 0.25 * rand())
    return min(2.0**attempt, MAX_BACKOFF) * (0.75 + 0.5 * rand())


def error_message(exc) -> str:
    """The server's own message (vLLM: {"error": {"message"}} or {"message"}), at most 500 characters."""
    body = exc.body
    message = None
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else inner or body.get("message")
    return str(message or exc.message)[:500]


def run_bodies(engine: dict, bodies: list[dict]) -> list:
    """All requests with at most ``engine.concurrency`` in flight; one response dict or ServerError each."""
    client = make_client(engine)

    def one(body):
        try:
            return post_chat(client, body, engine["retries"], engine["url"])
        except ServerError as exc:
            return exc

    try:
        with ThreadPoolExecutor(max_workers=max(1, engine["concurrency"])) as pool:
            return list(pool.map(one, bodies))
    finally:
        client.close()


def server_ready(url: str, timeout: float = 5) -> bool:
    """GET /health answers 200 (vLLM serves it without the API key); userinfo and query left out."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.netloc.rsplit("@", 1)[-1]
    health = urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
