"""Starting a vLLM engine for a caption job, and telling an engine failure from a request failure.

A request failure (a prompt too long, an item its processor refuses) is that record's error. An
engine failure (the engine died, the GPU ran out of memory, the server is unreachable) says nothing
about the records: the job must fail without writing results, so Snakemake retries it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

from vidcap.engine_build import check_engine_build, installed_build

# how vLLM says a prompt does not fit (multimodal prompts are checked after processing, text while tokenizing)
TOO_LONG_MARKERS = ("longer than the maximum model length", "maximum context length", "too long")
# what only a broken engine says, whichever request it was handling
ENGINE_FAILURE_TYPES = ("EngineDeadError", "EngineGenerateError", "OutOfMemoryError", "DistBackendError")
ENGINE_FAILURE_MARKERS = ("CUDA out of memory", "CUDA error", "NCCL error", "EngineCore encountered an issue")


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    return installed_build() == "cpu"


def prepare_environment(model: str, engine: dict) -> None:
    """Environment vLLM reads at import/start; must run before ``import vllm``."""
    if os.path.isdir(model):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if is_cpu_build():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(engine["cpu_kvcache_space_gb"])))
        # engine core in-process: seconds instead of tens of seconds to start on CPU
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # the cores the job booked (rule threads = engine.threads), not every core of a node shared with other
    # engines; read by torch at import, and inherited by an engine core started with fork or spawn. The CPU
    # build binds its OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND), within the job's CPU set
    for name in THREAD_VARS:
        os.environ[name] = str(engine["threads"])
    for name, value in (engine.get("env") or {}).items():  # the user's word wins
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
        # the engine's own counters (prompt tokens computed, prefix-cache hits) for the job's stats
        "disable_log_stats": False,
    }
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if engine.get(key):
            kwargs[key] = engine[key]
    if is_cpu_build():
        if engine["tensor_parallel_size"] == 1:
            kwargs["distributed_executor_backend"] = "uni"
        # vLLM 0.32's CPU build fails a seeded request whose prompt is split over steps ("CPU Generator does
        # not use offset"), and that kills the engine: never split prompts there (a step then holds any one)
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(
            kwargs.get("max_num_batched_tokens") or 0, engine["max_model_len"]
        )
    else:
        kwargs["gpu_memory_utilization"] = engine["gpu_memory_utilization"]
    return {**kwargs, **(engine.get("vllm_args") or {})}  # the user's word wins


def engine_arg_names() -> set[str] | None:
    """The fields of vLLM's ``EngineArgs``, read from its source without importing vLLM (seconds at parse
    time on a login node); None when vLLM is not installed here."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = os.path.join(spec.submodule_search_locations[0], "engine", "arg_utils.py")
    with open(source, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return None


def start_engine(model: str, engine: dict, limits: dict, seed: int):
    """A vLLM engine for ``model``; call inside :func:`vidcap.gpus.device_slots` on GPU machines.

    ``engine``: the config's engine section (missing keys take the schema's defaults).
    """
    from vidcap.config import with_defaults

    engine = with_defaults("engine", engine)
    check_engine_build(engine["device"])  # e.g. the CPU build on a node with GPUs: refused, not slow
    prepare_environment(model, engine)
    from vllm import LLM

    # an earlier engine of this process (tests, benchmarks, notebooks) that the garbage collector tears down
    # while this one starts takes vLLM's process-wide parallel groups with it: collect it first
    gc.collect()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch came in before the variable
    return LLM(**engine_kwargs(model, engine, limits, seed))


def stop_engine(llm, log) -> None:
    """Shut the engine down now (its engine core and worker processes end, their GPU memory with them),
    not when the garbage collector gets to it: call before the job's GPU slot is freed."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as exc:  # noqa: BLE001 -- already dead or half-built: the slot waits for its processes
        print(f"engine shutdown: {type(exc).__name__}: {exc}", file=log, flush=True)


class EngineWatchdog:
    """Turns a dead or stalled engine into an error where vLLM would wait forever.

    With the engine core in its own process (vLLM's default on GPUs), vLLM 0.32 notices the process
    died and shuts its client down, but a caller blocked in ``LLMEngine.step()`` keeps waiting on the
    output queue. This thread checks the client's ``engine_dead`` flag and wakes that caller with an
    error; if even that does not return within ``grace`` seconds, it ends the job (non-zero, no result
    written, finished records already in the result store) rather than leave it hanging until a time limit.

    A hung engine (e.g. NCCL waiting forever with TP>1) is alive but silent: with ``stall_timeout`` set,
    a call into the engine (:meth:`waiting`) that has not returned after that many seconds is handled
    as a death. In-process engines cannot be woken from another thread: those jobs end after ``grace``.
    """

    def __init__(self, llm, log, poll: float = 1.0, grace: float = 30.0, stall_timeout: float | None = None):
        import threading

        self.client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        self.log, self.poll, self.grace, self.stall_timeout = log, poll, grace, stall_timeout
        self.since: float | None = None  # when the pending call into the engine started
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="vidcap-engine-watchdog")
        # only multiprocess clients can die apart; any engine can stall
        if getattr(self.client, "resources", None) is not None or stall_timeout:
            self.thread.start()

    @contextlib.contextmanager
    def waiting(self):
        """Around a call that waits for the engine: it counts as stalled if it does not return in time."""
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def _problem(self) -> str | None:
        resources = getattr(self.client, "resources", None)
        if getattr(resources, "engine_dead", False):
            return "engine core process died"
        since = self.since
        if self.stall_timeout and since is not None and time.monotonic() - since > self.stall_timeout:
            return f"engine made no progress for {self.stall_timeout:.0f} s (engine.stall_timeout)"
        return None

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll):
            problem = self._problem()
            if problem:
                break
        else:
            return
        print(f"{problem}: failing the job", file=self.log, flush=True)
        try:
            from vllm.v1.engine.exceptions import EngineDeadError

            self.client.outputs_queue.put_nowait(EngineDeadError(problem))
        except Exception as exc:  # noqa: BLE001 -- any vLLM layout: fall back to ending the job below
            print(f"could not wake the waiting caller ({exc})", file=self.log, flush=True)
        if not self.stopped.wait(self.grace):
            print(f"{problem} and the job still waiting: exiting", file=self.log, flush=True)
            os._exit(70)

    def stop(self) -> None:
        self.stopped.set()
