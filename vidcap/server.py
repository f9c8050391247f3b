"""Captioning through a running OpenAI-compatible ``vllm serve`` instead of an in-job engine.

The same pre-sampled frames go over HTTP, losslessly: each frame as a PNG inside vLLM's
``data:video/jpeg;base64,<frame>,<frame>,...`` form (its image loader decodes any format), with the
video metadata as per-request ``media_io_kwargs`` so the server keeps every frame and the model gets
the same time positions as offline. Requests run with bounded concurrency; connection failures,
429 and 5xx answers are retried with exponential backoff; 4xx answers are the record's error.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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


def post_chat(url: str, body: dict, retries: int, timeout: float) -> dict:
    """POST one chat completion; retry transient failures with backoff (1, 2, 4 ... s)."""
    data = json.dumps(body).encode("utf-8")
    for attempt in range(retries + 1):
        request = urllib.request.Request(
            url.rstrip("/") + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):  # not vLLM's JSON error: keep the text
                detail = json.loads(detail).get("error", {}).get("message", detail)
            if exc.code != 429 and exc.code < 500 or attempt == retries:
                raise ServerError(exc.code, str(detail)[:500]) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if attempt == retries:
                raise ServerError(0, f"server unreachable at {url}: {exc}") from None
        time.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable")


def run_bodies(url: str, bodies: list[dict], concurrency: int, retries: int, timeout: float) -> list:
    """All requests with at most ``concurrency`` in flight; one response dict or exception each."""

    def one(body):
        try:
            return post_chat(url, body, retries, timeout)
        except ServerError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, bodies))


def server_ready(url: str, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
