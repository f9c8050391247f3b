"""GPU slots without GPUs: a fake device list, real processes, real flock locks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a job: take slots, report CUDA_VISIBLE_DEVICES, hold them until told to go (or killed)
JOB = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from vidcap.gpus import device_slots
out, go, tp = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with device_slots(tp, timeout=60, poll=0.05, log=sys.stderr) as ids:
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(ids)
    out.write_text(",".join(ids))
    while not go.exists():
        time.sleep(0.05)
"""


def start_jobs(tmp_path, n, tp, devices="0,1,2,3", tag="job", env_update=None):
    script = tmp_path / "job.py"
    script.write_text(JOB.format(repo=str(REPO)))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "VIDCAP_GPU_IDS", "VIDCAP_GPU_LOCK_DIR")
    }
    env.update(env_update or {"VIDCAP_GPU_IDS": devices, "VIDCAP_GPU_LOCK_DIR": str(tmp_path / "locks")})
    procs, outs = [], []
    for i in range(n):
        out = tmp_path / f"{tag}{i}.txt"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out), str(tmp_path / "go"), str(tp)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        outs.append(out)
    return procs, outs


def wait_for(paths, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and p.read_text() for p in paths):
            return [p.read_text().split(",") for p in paths]
        time.sleep(0.05)
    raise AssertionError(f"not all jobs got devices: {[p.exists() for p in paths]}")


def finish(procs, go):
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


@pytest.mark.parametrize("n_jobs,tp", [(4, 1), (2, 2)])
def test_concurrent_jobs_get_disjoint_devices(tmp_path, n_jobs, tp):
    procs, outs = start_jobs(tmp_path, n_jobs, tp)
    got = wait_for(outs)  # all hold their slots at the same time here
    finish(procs, tmp_path / "go")
    assert all(len(ids) == tp for ids in got)
    flat = [d for ids in got for d in ids]
    assert sorted(flat) == ["0", "1", "2", "3"]  # every device once


def test_a_job_waits_until_a_device_is_free(tmp_path):
    procs, outs = start_jobs(tmp_path, 2, 2)
    wait_for(outs)
    late, late_out = start_jobs(tmp_path, 1, 2, tag="late")
    time.sleep(1.0)
    assert not late_out[0].exists()  # all four devices are held: the third tp=2 job waits
    finish(procs, tmp_path / "go")
    assert len(wait_for(late_out)[0]) == 2
    finish(late, tmp_path / "go")


def test_a_killed_job_frees_its_devices(tmp_path):
    procs, outs = start_jobs(tmp_path, 1, 2, devices="0,1")
    first = wait_for(outs)[0]
    procs[0].send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel can free the lock
    procs[0].wait(timeout=30)
    after, after_out = start_jobs(tmp_path, 1, 2, devices="0,1", tag="after")
    assert sorted(wait_for(after_out, timeout=30)[0]) == sorted(first)
    finish(after, tmp_path / "go")


def test_jobs_inside_a_slurm_allocation_share_its_devices(tmp_path):
    """salloc --gpus=2, then snakemake --resources gpu=2 (local executor): two tp=1 jobs, one GPU each."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    allocation = {"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "0,1", "TMPDIR": str(tmpdir)}
    procs, outs = start_jobs(tmp_path, 2, 1, env_update=allocation)
    got = wait_for(outs)  # both hold a device at the same time
    finish(procs, tmp_path / "go")
    assert sorted(d for ids in got for d in ids) == ["0", "1"]
    # the locks live in a folder of that Slurm job: another allocation's device 0 is another GPU
    folder = tmpdir / f"vidcap-gpu-locks-{os.getuid()}-slurm4242"
    assert sorted(p.name for p in folder.glob("*.lock")) == ["gpu0.lock", "gpu1.lock"]
    assert sorted(p.name for p in folder.glob("cache-*")) == ["cache-gpu0", "cache-gpu1"]  # one per slot


def test_a_third_job_in_the_allocation_waits(tmp_path):
    allocation = {
        "SLURM_JOB_ID": "4243",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "VIDCAP_GPU_LOCK_DIR": str(tmp_path / "l"),
    }
    procs, outs = start_jobs(tmp_path, 2, 1, env_update=allocation)
    wait_for(outs)
    late, late_out = start_jobs(tmp_path, 1, 1, tag="late", env_update=allocation)
    time.sleep(1.0)
    assert not late_out[0].exists()
    finish(procs, tmp_path / "go")
    assert wait_for(late_out)[0][0] in ("0", "1")
    finish(late, tmp_path / "go")


def test_a_tp2_job_in_a_four_gpu_allocation_locks_two(tmp_path):
    allocation = {
        "SLURM_JOB_ID": "4244",
        "CUDA_VISIBLE_DEVICES": "4,5,6,7",
        "VIDCAP_GPU_LOCK_DIR": str(tmp_path / "l"),
    }
    procs, outs = start_jobs(tmp_path, 2, 2, env_update=allocation)
    got = wait_for(outs)
    finish(procs, tmp_path / "go")
    assert sorted(d for ids in got for d in ids) == ["4", "5", "6", "7"]  # the allocation's ids, not 0..3


def test_slurm_assignment_is_kept(monkeypatch):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("VIDCAP_GPU_IDS", "0,1,2,3")
    with device_slots(1) as ids:
        assert ids == ["3"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_exact_slurm_assignment_takes_no_lock(monkeypatch, tmp_path):
    """One sbatch per job (--gpus=2, tp=2): Slurm's devices are the job's, no lock taken."""
    from vidcap.gpus import device_slots

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path))
    with device_slots(2, timeout=0) as first, device_slots(2, timeout=0) as second:
        assert first == second == ["0", "1"]
    assert not any(tmp_path.iterdir())


def test_slurm_gave_fewer_devices_than_needed(monkeypatch, tmp_path):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="needs 2 GPUs but only 1"), device_slots(2):
        pass


def test_node_devices_ignore_cuda_visible_devices(monkeypatch, tmp_path):
    """What the node has (for the build check) is not what this process may use."""
    from vidcap.gpus import node_devices, visible_devices

    monkeypatch.delenv("VIDCAP_GPU_IDS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert node_devices() == [] and visible_devices() == ["0", "1"]


def test_no_gpus_is_a_no_op(monkeypatch):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("VIDCAP_GPU_IDS", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with device_slots(2) as ids:
        assert ids == []
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_more_devices_than_visible_is_an_error(monkeypatch, tmp_path):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("VIDCAP_GPU_IDS", "0")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="needs 2 GPUs"), device_slots(2):
        pass


def test_local_runs_default_to_one_gpu_cluster_runs_to_no_cap():
    from vidcap.gpus import default_gpu_resource

    assert default_gpu_resource(True, None, {"_cores": 2}) == 1  # local run, no --resources gpu=N
    assert default_gpu_resource(True, None, {"gpu": 4}) is None  # the command line's value stays
    assert default_gpu_resource(True, 100, {}) is None  # --jobs: a cluster run, each job gets its own GPUs
    assert default_gpu_resource(False, None, {}) is None  # a cluster job's process runs what it is given


def take_one(monkeypatch, folder):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("VIDCAP_GPU_IDS", "0")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(folder))
    with device_slots(1, timeout=0) as ids:
        return ids


def test_the_lock_folder_is_created_private(monkeypatch, tmp_path):
    folder = tmp_path / "locks"
    assert take_one(monkeypatch, folder) == ["0"]
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "gpu0.lock").stat().st_mode & 0o777 == 0o600


def test_a_lock_folder_others_may_enter_is_refused(monkeypatch, tmp_path):
    from vidcap.gpus import UnsafeLockDir

    folder = tmp_path / "locks"
    folder.mkdir()
    folder.chmod(0o1777)  # as a shared /tmp folder made by someone else would be
    with pytest.raises(UnsafeLockDir, match="mode 1777: others may write"):
        take_one(monkeypatch, folder)
    assert not (folder / "gpu0.lock").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_an_own_lock_folder_others_may_only_read_is_made_private(monkeypatch, tmp_path):
    """As an earlier vidcap left /tmp/vidcap-gpu-locks-UID (0755): nobody else could write in it."""
    folder = tmp_path / "locks"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert take_one(monkeypatch, folder) == ["0"]
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_lock_folder_of_another_user_is_refused(monkeypatch, tmp_path):
    from vidcap.gpus import UnsafeLockDir

    folder = tmp_path / "locks"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)  # nobody
    with pytest.raises(UnsafeLockDir, match="belongs to uid 65534"):
        take_one(monkeypatch, folder)


def test_a_symlinked_lock_folder_is_refused(monkeypatch, tmp_path):
    from vidcap.gpus import UnsafeLockDir

    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "locks").symlink_to(real)
    with pytest.raises(UnsafeLockDir, match="not a folder"):
        take_one(monkeypatch, tmp_path / "locks")


def test_a_symlinked_lock_file_is_not_followed(monkeypatch, tmp_path):
    """A link planted where the lock file goes must not let the job truncate (or lock) its target."""
    folder = tmp_path / "locks"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / "gpu0.lock").symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        take_one(monkeypatch, folder)
    assert victim.read_text() == "precious\n"


# a job that leaves its slot while a process it started with `spawn` (as vLLM's engine core under
# VLLM_WORKER_MULTIPROC_METHOD=spawn: no lock inherited) still runs and would still hold GPU memory
SPAWNING_JOB = """
import multiprocessing, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from vidcap.gpus import device_slots

def engine(done):
    time.sleep(2.0)
    Path(done).write_text(repr(time.time()))

if __name__ == "__main__":
    with device_slots(1, timeout=60, poll=0.05) as ids:
        multiprocessing.get_context("spawn").Process(target=engine, args=(sys.argv[1],)).start()
        Path(sys.argv[2]).write_text(repr(time.time()))
"""


def test_the_slot_is_held_until_spawned_processes_end(tmp_path):
    script = tmp_path / "spawning.py"
    script.write_text(SPAWNING_JOB.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(VIDCAP_GPU_IDS="0", VIDCAP_GPU_LOCK_DIR=str(tmp_path / "locks"))
    engine_done, left = tmp_path / "engine_done", tmp_path / "left"
    first = subprocess.Popen([sys.executable, str(script), str(engine_done), str(left)], env=env)
    deadline = time.monotonic() + 60
    while not left.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    procs, outs = start_jobs(tmp_path, 1, 1, devices="0", tag="next")
    wait_for(outs)
    taken = time.time()
    finish(procs, tmp_path / "go")
    assert first.wait(timeout=60) == 0
    assert float(engine_done.read_text()) <= taken  # the next job got the GPU only after the engine ended


CACHE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def test_each_slot_has_its_own_warm_cache(monkeypatch, tmp_path):
    """Engines on one node never share a compile cache; the next job on the same GPU reuses its slot's."""
    from vidcap.gpus import device_slots

    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("VIDCAP_GPU_IDS", "0,1")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path / "locks"))
    other_job = (
        f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from vidcap.gpus import device_slots\n"
        "with device_slots(1, timeout=0) as ids:\n"
        "    print(ids[0], *(os.environ[n] for n in sys.argv[1:]))"
    )
    with device_slots(1, timeout=0) as first:
        seen_first = {name: os.environ[name] for name in CACHE_VARS}
        env = {k: v for k, v in os.environ.items() if k not in (*CACHE_VARS, "CUDA_VISIBLE_DEVICES")}
        out = subprocess.run(  # another job on the node at the same time
            [sys.executable, "-c", other_job, *CACHE_VARS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        second, seen_second = [out[0]], dict(zip(CACHE_VARS, out[1:]))
        Path(seen_first["VLLM_CACHE_ROOT"], "compiled").write_text("x")
    assert first != second
    assert all(seen_first[n] != seen_second[n] for n in CACHE_VARS)
    assert all(Path(p).is_dir() and Path(p).stat().st_mode & 0o777 == 0o700 for p in seen_first.values())
    assert not any(name in os.environ for name in CACHE_VARS)  # restored
    with device_slots(1, timeout=0):  # the next job on GPU 0: the same, warm folder
        assert os.environ["VLLM_CACHE_ROOT"] == seen_first["VLLM_CACHE_ROOT"]
        assert Path(os.environ["VLLM_CACHE_ROOT"], "compiled").exists()


def test_a_job_without_a_slot_lock_gets_a_cache_of_its_own(monkeypatch):
    """No GPU (or a Slurm job given exactly its GPUs, numbered 0 in every job): a job's own folder, removed."""
    from vidcap.gpus import device_slots

    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIDCAP_GPU_IDS", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with device_slots(1):
        first = Path(os.environ["VLLM_CACHE_ROOT"])
        assert first.is_dir()
    assert "VLLM_CACHE_ROOT" not in os.environ and not first.exists()
    with device_slots(1):
        assert Path(os.environ["VLLM_CACHE_ROOT"]) != first


def test_model_infos_are_shared_by_private_caches(monkeypatch, tmp_path):
    """vLLM's model-class facts outlive a job's own cache folder (else every engine start inspects the model
    class again, ~8 s); removing the folder leaves them, and a slot's folder shares them too."""
    from vidcap.gpus import device_slots

    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    shared = tmp_path / "home-cache" / "vllm" / "modelinfos"
    monkeypatch.setenv("VIDCAP_GPU_IDS", "")
    with device_slots(1):
        own = Path(os.environ["VLLM_CACHE_ROOT"])
        (own / "modelinfos" / "model.json").write_text("{}")  # as vLLM writes one
    assert not own.exists() and (shared / "model.json").read_text() == "{}"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("VIDCAP_GPU_IDS", "0")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path / "locks"))
    with device_slots(1, timeout=0):
        assert (Path(os.environ["VLLM_CACHE_ROOT"]) / "modelinfos" / "model.json").exists()


def test_a_cache_the_user_set_is_kept(monkeypatch, tmp_path):
    from vidcap.gpus import device_slots

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "shared"))
    monkeypatch.setenv("VIDCAP_GPU_IDS", "")
    with device_slots(1):
        assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "shared")
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "shared")
