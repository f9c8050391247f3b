"""vLLM's own counters for a caption job's stats: what the engine computed, not what vidcap planned.

- ``prompt_tokens``: prompt tokens of the requests the engine admitted (``vllm:prompt_tokens``, all of
  them, cached or not);
- ``prefix_cache_hits``: of those, the tokens whose KV came from the prefix cache (``vllm:prefix_cache_hits``:
  full KV blocks of an earlier or concurrent request with the same tokens and media, so not computed);
- ``prompt_tokens_computed``: the difference, the prompt tokens the engine actually prefilled;
- ``encoder_inputs``: media items (a video, an image) the scheduler sent through the vision encoder. A
  record's caption-set entries share one when their video's encoder output is still in vLLM's encoder
  cache (keyed by the media's uuid: vidcap.backends.media_uuids). vLLM exports no metric for this; it is
  counted on the in-process scheduler (the CPU build's default), and is None when the engine core runs in a
  process of its own (vLLM's default on GPUs).

The first three are read from vLLM's Prometheus registry (``LLM.get_metrics``, needs ``disable_log_stats``
False, which vidcap.engine sets); the registry is per process, so a job takes the difference of two
snapshots. Requests of the server backend are counted by the server: there all four are None.
"""

from __future__ import annotations

PROMETHEUS = {"prompt_tokens": "vllm:prompt_tokens", "prefix_cache_hits": "vllm:prefix_cache_hits"}
FIELDS = ("prompt_tokens", "prefix_cache_hits", "prompt_tokens_computed", "encoder_inputs")


def empty() -> dict:
    return dict.fromkeys(FIELDS)


class EngineCounters:
    """Counts from the moment it is made; :meth:`read` gives the counts since then."""

    def __init__(self, llm):
        self.llm = llm
        self.encoder_inputs = self._count_encoder_inputs(llm)
        self.encoder_start = self.encoder_inputs[0] if self.encoder_inputs is not None else 0
        self.start = self._prometheus()

    def _prometheus(self) -> dict | None:
        try:
            metrics = self.llm.get_metrics()
        except Exception:  # noqa: BLE001 -- stats logging off (a user's vllm_args), or another vLLM layout
            return None
        values = dict.fromkeys(PROMETHEUS, 0)
        names = {v: k for k, v in PROMETHEUS.items()}
        for metric in metrics:
            if metric.name in names and hasattr(metric, "value"):
                values[names[metric.name]] += int(metric.value)
        return values

    @staticmethod
    def _count_encoder_inputs(llm) -> list[int] | None:
        """Wrap the in-process scheduler's encoder-input allocation (once per engine) to count the items
        it schedules for the encoder (cached ones are not allocated again); None when out of reach."""
        client = getattr(llm.llm_engine, "engine_core", None)  # in-process: vLLM's InprocClient
        scheduler = getattr(getattr(client, "engine_core", None), "scheduler", None)
        allocate = getattr(scheduler, "_allocate_encoder_inputs", None)
        if allocate is None:
            return None
        count = getattr(scheduler, "_vidcap_encoder_inputs", None)
        if count is None:
            count = scheduler._vidcap_encoder_inputs = [0]

            def counted(request, input_ids, duplicate_input_ids):
                count[0] += len(input_ids)
                return allocate(request, input_ids, duplicate_input_ids)

            scheduler._allocate_encoder_inputs = counted
        return count

    def read(self) -> dict:
        out = empty()
        now = self._prometheus()
        if now is not None and self.start is not None:
            out.update({k: now[k] - self.start[k] for k in PROMETHEUS})
            out["prompt_tokens_computed"] = out["prompt_tokens"] - out["prefix_cache_hits"]
        if self.encoder_inputs is not None:
            out["encoder_inputs"] = self.encoder_inputs[0] - self.encoder_start
        return out
