"""GPU slots for caption jobs: each job takes its own devices, every device is used by one job at a time.

Snakemake's ``gpu`` resource is only a counter: it never says *which* GPU a job may use, so without
this every caption job would start on GPU 0. A job locks ``tensor_parallel_size`` free devices of
the visible list (one ``fcntl.flock`` lock file per device id) and sets ``CUDA_VISIBLE_DEVICES`` to
them before vLLM/torch are imported. The kernel releases a lock when its process dies, so a killed
job never leaves a device taken. When Slurm has already assigned devices to the job, they are used as is.
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


def visible_devices() -> list[str]:
    """Device ids this machine offers: VIDCAP_GPU_IDS, else CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    for name in (GPU_IDS_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None:
            return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def scheduler_assigned() -> bool:
    """Slurm set CUDA_VISIBLE_DEVICES for this job: it already owns those devices alone."""
    return bool(os.environ.get("SLURM_JOB_ID")) and "CUDA_VISIBLE_DEVICES" in os.environ


def lock_dir() -> Path:
    # per machine and user: the locks guard this node's devices
    default = Path(tempfile.gettempdir()) / f"vidcap-gpu-locks-{os.getuid()}"
    path = Path(os.environ.get(LOCK_DIR_ENV) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def device_slots(count: int, timeout: float | None = None, poll: float = 0.5, log=sys.stderr):
    """Hold ``count`` devices for the block and expose only them via CUDA_VISIBLE_DEVICES.

    Yields the device ids (an empty list when there are no GPUs, or Slurm's own assignment).
    Waits while fewer than ``count`` devices are free; holds none while waiting (no deadlock
    between jobs that each hold part of what the other needs).
    """
    if scheduler_assigned():
        yield [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d]
        return
    devices = visible_devices()
    if not devices:
        yield []
        return
    if count > len(devices):
        raise RuntimeError(f"a job needs {count} GPUs but only {len(devices)} are visible: {','.join(devices)}")
    folder = lock_dir()
    started = time.monotonic()
    waited = False
    while True:
        held = []
        for device in devices:
            handle = _try_lock(folder / f"gpu{device}.lock")
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
