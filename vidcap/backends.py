"""The two ways a caption job reaches a model, behind one interface with a bounded window.

``submit`` hands one record's request to the engine (building it from the frame cache just then),
``collect`` waits until at least one finishes. ``has_room`` keeps the requests in flight bounded by
count and by bytes, so a job's memory depends on the engine's batch, never on the shard's size.
Request-level failures come back as exceptions per record; engine-level ones raise
:class:`vidcap.engine.EngineFailure` and end the job.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from vidcap import native_audio
from vidcap.engine import EngineFailure, EngineWatchdog, is_engine_failure
from vidcap.prompts import Pending, frame_bytes, image_array, video_item
from vidcap.provenance import canonical_hash
from vidcap.redact import redact_url

# frames arrive at the size vidcap planned (multiples of the patch factor), so the tokens it counted are the
# tokens the model sees; a processor with other pixel bounds (Qwen3-VL's, a tiny model's) would resize again
NO_RESIZE = {"do_resize": False}
# host bytes a queued request holds per byte of its uint8 frames: the frames plus vLLM's float32 patches
HELD_PER_FRAME_BYTE = 5


@dataclass
class Answer:
    """One request's candidates (``candidates.n`` of them, in sample order) and its token counts."""

    texts: list[str]
    prompt_tokens: int | None
    output_tokens: int | None  # summed over the candidates
    finish_reasons: list[str | None]

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0]


class Window:
    """Requests in flight, bounded by count and by the bytes they hold (at least one always fits)."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count, self.max_bytes = max(1, max_count), max_bytes
        self.items: dict[str, tuple[Pending, int]] = {}
        self.bytes = 0

    def has_room(self, item: Pending) -> bool:
        if not self.items:
            return True
        cost = frame_bytes(item.entry) * HELD_PER_FRAME_BYTE
        return len(self.items) < self.max_count and self.bytes + cost <= self.max_bytes

    def add(self, key: str, item: Pending) -> None:
        cost = frame_bytes(item.entry) * HELD_PER_FRAME_BYTE
        self.items[key] = (item, cost)
        self.bytes += cost

    def pop(self, key: str) -> Pending:
        item, cost = self.items.pop(key)
        self.bytes -= cost
        return item

    def __len__(self) -> int:
        return len(self.items)


def media_data(item: Pending) -> dict:
    """vLLM's ``multi_modal_data`` for one record: its frames, loaded from the cache now."""
    data = {}
    if item.entry["images"]:
        images = [image_array(i) for i in item.entry["images"]]
        data["image"] = images[0] if len(images) == 1 else images
    if item.entry["videos"]:
        videos = [video_item(v, keep) for v, keep in zip(item.entry["videos"], item.keep)]
        data["video"] = videos[0] if len(videos) == 1 else videos
    return data


def media_uuids(item: Pending) -> dict:
    """vLLM ``multi_modal_uuids``: each item's frame cache file (its content key) and the frames kept."""
    uuids = {}
    if item.entry["images"]:
        uuids["image"] = [Path(i["frames"]).stem for i in item.entry["images"]]
    if item.entry["videos"]:
        uuids["video"] = [
            Path(v["frames"]).stem + ("" if keep is None else "-" + canonical_hash(keep)[:16])
            for v, keep in zip(item.entry["videos"], item.keep)
        ]
    return uuids


def asked(item: Pending, sampling: dict, json_schema: dict | None) -> tuple[dict, dict | None]:
    """The sampling settings and answer schema of a request: its caption-set entry's, or the job's."""
    if item.ask is None:
        return sampling, json_schema
    return item.ask.sampling, item.ask.json_schema


class LastMedia:
    """The last record's ``multi_modal_data``, reused while the same frames are asked again: a record's
    caption-set requests come one after another, so its frames are read (or decoded) once, and only one
    record's arrays are held beyond the requests in flight."""

    def __init__(self):
        self.key, self.value = None, None

    def data(self, item: Pending) -> dict:
        key = (id(item.entry), repr(item.keep))
        if key != self.key:
            self.key, self.value = key, media_data(item)
        return self.value


class OfflineBackend:
    """A vLLM engine in this process, fed request by request (``LLM.enqueue``) and stepped."""

    def __init__(
        self, llm, sampling: dict, engine: dict, log=None, n: int = 1, json_schema: dict | None = None
    ):
        self.llm, self.sampling = llm, sampling
        self.n, self.json_schema = n, json_schema
        self.watchdog = EngineWatchdog(llm, log, stall_timeout=engine.get("stall_timeout"))
        seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        # a few waiting requests keep the batch full when running ones finish
        self.window = Window(math.ceil(seqs * 1.5), int(engine["in_flight_gb"] * 2**30))
        self.prepare_seconds = self.engine_seconds = 0.0
        self.media = LastMedia()

    def has_room(self, item: Pending) -> bool:
        return self.window.has_room(item)

    def unsupported(self, item: Pending) -> str | None:
        return None

    def params(self, item: Pending):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s, schema = asked(item, self.sampling, self.json_schema)
        structured = None
        if schema is not None:
            structured = StructuredOutputsParams(json=schema)
        return SamplingParams(
            n=self.n,  # one prefill, n decodes
            temperature=s["temperature"],
            top_p=s["top_p"],
            top_k=s["top_k"] or 0,  # vLLM: 0 (or -1) is off
            presence_penalty=s["presence_penalty"]
            if item.presence_penalty is None
            else item.presence_penalty,
            repetition_penalty=s["repetition_penalty"],
            min_tokens=s["min_tokens"],
            max_tokens=s["max_tokens"],
            seed=item.seed,
            structured_outputs=structured,
        )

    def submit(self, item: Pending) -> None:
        t0 = time.monotonic()
        # vidcap's frame cache key names the content: vLLM need not hash every frame tensor again
        # audio.mode native: each video's own audio track, heard with it (nothing otherwise)
        audio, audio_uuids, audio_kwargs = native_audio.request_parts(item.entry, item.keep)
        request = {
            "prompt": item.text,
            "multi_modal_data": {**self.media.data(item), **audio},
            "multi_modal_uuids": {**media_uuids(item), **audio_uuids},
            # the frames step sized every frame for the model: its processor must not resize them again
            "mm_processor_kwargs": {**NO_RESIZE, **audio_kwargs},
        }
        t1 = time.monotonic()
        self.prepare_seconds += t1 - t0
        try:
            (internal_id,) = self.llm.enqueue([request], [self.params(item)], use_tqdm=False)
        except Exception as exc:
            if is_engine_failure(exc):
                raise EngineFailure(f"engine failed while adding a request: {exc}") from exc
            raise
        finally:
            self.engine_seconds += time.monotonic() - t1
        # outputs carry the id LLM gave the request; the engine's own adds "-<8 random characters>"
        self.window.add(internal_id.rsplit("-", 1)[0], item)

    def collect(self) -> list[tuple[Pending, Answer | Exception]]:
        done = []
        t0 = time.monotonic()
        try:
            while not done:
                if not self.llm.llm_engine.has_unfinished_requests():
                    raise EngineFailure(f"the engine lost {len(self.window)} request(s) in flight")
                with self.watchdog.waiting():
                    outputs = self.llm.llm_engine.step()
                for output in outputs:
                    if output.finished and output.request_id in self.window.items:
                        done.append((self.window.pop(output.request_id), self._answer(output)))
        except EngineFailure:
            raise
        except Exception as exc:  # anything raised while stepping breaks the engine, not one record
            raise EngineFailure(f"engine failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.engine_seconds += time.monotonic() - t0
        return done

    def close(self) -> None:
        self.watchdog.stop()
        self.media = LastMedia()

    @staticmethod
    def _answer(output) -> Answer:
        completions = sorted(output.outputs, key=lambda c: c.index)
        return Answer(
            [c.text for c in completions],
            len(output.prompt_token_ids),
            sum(len(c.token_ids) for c in completions),
            [c.finish_reason for c in completions],
        )

    def __len__(self) -> int:
        return len(self.window)


class ServerBackend:
    """An OpenAI-compatible ``vllm serve``: at most ``concurrency`` request bodies exist at a time."""

    def __init__(
        self, model: str, system_prompt: str, sampling: dict, engine: dict, n: int = 1, json_schema=None
    ):
        from vidcap import server

        self.server, self.engine = server, engine
        self.n, self.json_schema = n, json_schema
        self.model = engine["served_model"] or model
        self.system_prompt, self.sampling = system_prompt, sampling
        if not server.server_ready(engine["url"], timeout=min(30.0, engine["request_timeout"])):
            raise EngineFailure(f"server unreachable at {redact_url(engine['url'])} (no answer on /health)")
        self.client = server.make_client(engine)
        self.pool = ThreadPoolExecutor(max_workers=engine["concurrency"])
        self.futures: dict[Future, Pending] = {}
        self.prepare_seconds = self.engine_seconds = 0.0

    def has_room(self, item: Pending) -> bool:
        return len(self.futures) < self.engine["concurrency"]

    def _post(self, item: Pending) -> dict:
        # built in the worker thread: the PNG encoding of one body runs beside the others
        images = [image_array(i) for i in item.entry["images"]]
        video = video_item(item.entry["videos"][0], item.keep[0]) if item.entry["videos"] else None
        sampling, schema = asked(item, self.sampling, self.json_schema)
        system_prompt = item.ask.system_prompt if item.ask else self.system_prompt
        if item.presence_penalty is not None:
            sampling = {**sampling, "presence_penalty": item.presence_penalty}
        body = self.server.chat_body(
            self.model, system_prompt, item.prompt, images, video, sampling, item.seed
        )
        if self.n > 1:
            body["n"] = self.n
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "caption", "schema": schema},
            }
        return self.server.post_chat(self.client, body, self.engine["retries"], self.engine["url"])

    def unsupported(self, item: Pending) -> str | None:
        if len(item.entry["videos"]) > 1:  # media_io_kwargs carry one video's metadata per request
            return "server backend: one video per record at most"
        if native_audio.heard(item.entry):
            return "server backend: audio.mode native needs the offline backend"
        return None

    def submit(self, item: Pending) -> None:
        self.futures[self.pool.submit(self._post, item)] = item

    def collect(self) -> list[tuple[Pending, Answer | Exception]]:
        t0 = time.monotonic()
        finished, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        self.engine_seconds += time.monotonic() - t0
        done = []
        for future in finished:
            item = self.futures.pop(future)
            try:
                answer = future.result()
            except self.server.ServerError as exc:
                if self.server.engine_level(exc.status):  # after its retries: the server, not the record
                    self.close()
                    raise EngineFailure(str(exc)) from exc
                done.append((item, exc))
                continue
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            usage = answer.get("usage") or {}
            texts = [c["message"]["content"] or "" for c in choices]
            reasons = [c["finish_reason"] for c in choices]
            done.append(
                (item, Answer(texts, usage.get("prompt_tokens"), usage.get("completion_tokens"), reasons))
            )
        return done

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def __len__(self) -> int:
        return len(self.futures)
