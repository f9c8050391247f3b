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

The lock folder is private: created mode 0700, and refused when it is not a folder of this user with
no access for others (in a shared /tmp another user could otherwise plant links that make a job
truncate the victim's files, or hold a lock file open and so a GPU forever). Lock files are opened
without following symbolic links.

A slot is held until the processes the job started inside it (vLLM's engine core and its workers)
have ended: with ``fork`` they inherit the lock, but with ``spawn`` they do not, and releasing the
slot while they still hold GPU memory would let the next job start on a full GPU.

The engine's compile caches go to a folder of the slot (vidcap.engine_cache): never shared by two
engines at once, warm for the next job on the same GPU(s).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vidcap.engine_cache import private_caches

GPU_IDS_ENV = "VIDCAP_GPU_IDS"  # overrides device discovery (comma-separated ids), e.g. for tests
LOCK_DIR_ENV = "VIDCAP_GPU_LOCK_DIR"
# seconds a leaving job waits for its engine processes to end before freeing the GPU anyway (vLLM
# itself terminates, then kills, its engine core within seconds of shutdown)
RELEASE_GRACE = 120.0
# helpers that live as long as the process that started them and hold no GPU memory: torch.compile's
# worker pool, multiprocessing's resource tracker (started with the first `spawn`) and fork server
HELPER_MARKS = ("compile_worker", "multiprocessing.resource_tracker", "multiprocessing.forkserver")


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
    return private_dir(Path(os.environ.get(LOCK_DIR_ENV) or default))


class UnsafeLockDir(RuntimeError):
    """The lock folder is not this user's private folder: using it would let others interfere."""


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can enter: created 0700, or checked if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)  # lstat: a symbolic link planted in its place is refused, not followed
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (a symbolic link?)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    elif info.st_mode & 0o022:  # others could have planted files in it: never trusted
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}: others may write in it (needs 700)"
    elif info.st_mode & 0o077:  # ours, only readable by others (made by an earlier vidcap): made private
        os.chmod(path, 0o700, follow_symlinks=False)
    if problem:
        raise UnsafeLockDir(
            f"GPU lock folder {path} {problem}; remove it, or set {LOCK_DIR_ENV} to a private folder"
        )
    return path


def _try_lock(path: Path):
    # O_NOFOLLOW: a symbolic link in the lock's place is an error, never a way into another file
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "r+")  # the open descriptor is the lock: it outlives this call
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def device_slots(
    count: int,
    timeout: float | None = None,
    poll: float = 0.5,
    log=sys.stderr,
    release_grace: float = RELEASE_GRACE,
):
    """Hold ``count`` devices for the block and expose only them via CUDA_VISIBLE_DEVICES.

    Yields the device ids held (an empty list when there are no GPUs; Slurm's own assignment when it
    gave the job exactly ``count``). Waits while fewer than ``count`` devices are free; holds none
    while waiting (no deadlock between jobs that each hold part of what the other needs). On leaving,
    waits up to ``release_grace`` seconds for the processes started in the block to end (shut the
    engine down inside it) before the devices are freed. The engine's caches: vidcap.engine_cache.
    """
    assigned = scheduler_assigned()
    if assigned is not None and len(assigned) == count:
        print(
            f"GPU(s) {','.join(assigned)} assigned by Slurm (job {os.environ['SLURM_JOB_ID']})",
            file=log,
            flush=True,
        )
        with private_caches():  # this Slurm job's own: other jobs on the node also see their GPU as 0
            yield assigned
        return
    devices = assigned if assigned is not None else visible_devices()
    if not devices:
        with private_caches():
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
    before = _descendants()
    try:
        # one folder per set of devices: only the job holding them all uses it, and the next one finds it warm
        with private_caches(folder / f"cache-gpu{'-'.join(ids).replace('/', '_')}"):
            try:
                yield ids
            finally:
                _wait_for_new_descendants(before, release_grace, log)
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


def _descendants() -> dict[int, float]:
    """This process's descendants, pid -> start time (tells a reused pid from the process it was)."""
    try:
        import psutil  # installed with vLLM; the frames environment never holds a GPU slot
    except ImportError:
        return {}
    found = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if not any(mark in part for part in proc.cmdline() for mark in HELPER_MARKS):
                found[proc.pid] = proc.create_time()
    return found


def _wait_for_new_descendants(before: dict[int, float], grace: float, log) -> None:
    deadline = time.monotonic() + grace
    announced = False
    while True:
        alive = [pid for pid, started in _descendants().items() if before.get(pid) != started]
        alive = [pid for pid in alive if not _is_zombie(pid)]
        if not alive:
            return
        if time.monotonic() > deadline:
            print(
                f"processes {alive} still alive {grace:.0f} s after the job left its GPU slot: freeing it",
                file=log,
                flush=True,
            )
            return
        if not announced:
            print(f"GPU slot kept until processes {alive} end (engine memory)", file=log, flush=True)
            announced = True
        time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True  # gone
