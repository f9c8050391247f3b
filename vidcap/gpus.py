"""GPU slots for caption jobs: each job takes its own devices, every device is used by one job at a time.

Snakemake's ``gpu`` resource is only a counter: it never says *which* GPU a job may use, so without
this every caption job would start on GPU 0. A job locks ``tensor_parallel_size`` free devices of
the visible list (one ``fcntl.flock`` lock file per device id) and sets ``CUDA_VISIBLE_DEVICES`` to
them before vLLM/torch are imported. The kernel releases a lock when its process dies, so a killed
job never leaves a device taken.

Inside a Slurm job the visible list is what Slurm gave: exactly ``tensor_parallel_size`` devices (one
job per ``sbatch --gpus``) are used as they are; more (``salloc --gpus=4`` then ``snakemake --resources
gpu=4`` with the local executor) are shared out by locks as on a workstation, in a lock folder of
that Slurm job (Slurm may number every allocation's devices from 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GPU_IDS_ENV = "VIDCAP_GPU_IDS"  # overrides device discovery (comma-separated ids), e.g. for tests
LOCK_DIR_ENV = "VIDCAP_GPU_LOCK_DIR"


def _listed(value: str) -> list[str]:
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


def _nvidia_smi_devices() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # no driver, or a GPU-less node with the tools installed
    return [line.strip() for line in out.splitlines() if line.strip()]


def node_devices() -> list[str]:
    """GPUs this node has, whatever this process may use: VIDCAP_GPU_IDS, else nvidia-smi."""
    value = os.environ.get(GPU_IDS_ENV)
    return _listed(value) if value is not None else _nvidia_smi_devices()


def visible_devices() -> list[str]:
    """Device ids this machine offers: VIDCAP_GPU_IDS, else CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    for name in (GPU_IDS_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None:
            return _listed(value)
    return _nvidia_smi_devices()


def scheduler_assigned() -> list[str] | None:
    """The devices Slurm gave this job (its CUDA_VISIBLE_DEVICES), or None outside a Slurm GPU job."""
    if os.environ.get("SLURM_JOB_ID") and "CUDA_VISIBLE_DEVICES" in os.environ:
        return _listed(os.environ["CUDA_VISIBLE_DEVICES"])
    return None


def lock_dir() -> Path:
    # per machine and user: the locks guard this node's devices; inside a Slurm job, that job's devices
    job = os.environ.get("SLURM_JOB_ID") if scheduler_assigned() is not None else None
    suffix = f"-slurm{job}" if job else ""
    default = Path(tempfile.gettempdir()) / f"vidcap-gpu-locks-{os.getuid()}{suffix}"
    path = Path(os.environ.get(LOCK_DIR_ENV) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(path: Path):
    handle = open(path, "a+")  # noqa: SIM115 -- the open descriptor is the lock: it outlives this call
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def device_slots(count: int, timeout: float | None = None, poll: float = 0.5, log=sys.stderr):
    """Hold ``count`` devices for the block and expose only them via CUDA_VISIBLE_DEVICES.

    Yields the device ids held (an empty list when there are no GPUs; Slurm's own assignment when it
    gave the job exactly ``count``). Waits while fewer than ``count`` devices are free; holds none
    while waiting (no deadlock between jobs that each hold part of what the other needs).
    """
    assigned = scheduler_assigned()
    if assigned is not None and len(assigned) == count:
        print(
            f"GPU(s) {','.join(assigned)} assigned by Slurm (job {os.environ['SLURM_JOB_ID']})",
            file=log,
            flush=True,
        )
        yield assigned
        return
    devices = assigned if assigned is not None else visible_devices()
    if not devices:
        yield []
        return
    if count > len(devices):
        raise RuntimeError(
            f"a job needs {count} GPUs but only {len(devices)} are visible: {','.join(devices)}"
        )
    folder = lock_dir()
    started = time.monotonic()
    waited = False
    while True:
        held = []
        for device in devices:
            handle = _try_lock(folder / f"gpu{device.replace('/', '_')}.lock")  # MIG ids hold slashes
            if handle is not None:
                held.append((device, handle))
                if len(held) == count:
                    break
        if len(held) == count:
            break
        for _, handle in held:
            handle.close()
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no {count} free GPU(s) among {','.join(devices)} after {timeout:.0f} s")
        if not waited:
            print(f"waiting for {count} free GPU(s) among {','.join(devices)}", file=log, flush=True)
            waited = True
        time.sleep(poll)
    ids = [device for device, _ in held]
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    for _, handle in held:  # who holds what, for people looking at the lock files
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    print(f"GPU slot(s) {','.join(ids)} taken (CUDA_VISIBLE_DEVICES={','.join(ids)})", file=log, flush=True)
    try:
        yield ids
    finally:
        for _, handle in held:
            handle.close()  # closing the descriptor releases the flock
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def default_gpu_resource(main_process: bool, remote_jobs: int | None, given: dict) -> int | None:
    """The ``gpu`` limit a run gets when neither the command line nor a profile set one (a workflow using
    vidcap as a module loads no vidcap profile): 1 for a local run, so caption jobs take the one GPU in
    turn instead of all starting on it. None for a cluster run (``--jobs`` set, Snakemake's sign of
    remote execution), where each job asks the scheduler for its own GPUs and a cap would serialise
    them, and None in a cluster job's own Snakemake process, which must run its job whatever it asks.
    """
    if not main_process or "gpu" in given or remote_jobs is not None:
        return None
    return 1
