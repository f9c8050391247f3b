"""Caption jobs as they run at scale: memory flat in the shard size, engine failures fail the job,
a killed job resumes where it stopped, and the engine's limits admit every video the budget plans.

Real vLLM (CPU build) on the tiny random Qwen2-VL (gibberish captions); jobs run as their own
processes, so their peak memory can be read and they can be killed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import CAPTIONED, REPO, make_video, synthetic_shard, write_records

from vidcap import config as vconfig
from vidcap import settings as vsettings
from vidcap.frames import extract_frames

pytestmark = pytest.mark.slow

JOB = """
import json, sys
from vidcap.caption import caption_shard
shard, manifest, out, settings = sys.argv[1:5]
stats = caption_shard(shard, manifest, out, json.loads(settings), log=sys.stderr)
with open(out + ".test-stats", "w") as handle:
    json.dump({k: stats[k] for k in ("requests", "stored", "ok", "truncated", "degenerate", "error")}, handle)
"""


def job_config(model, **overrides) -> dict:
    """A whole validated config (schema defaults + overrides), as the workflow builds it."""
    base = {
        "input": "records.jsonl",
        "model": str(model),
        "frames": {
            "fps": 2.0,
            "min_frames": 4,
            "max_frames": 4,
            "min_pixels": 3136,
            "max_pixels": 12544,
            "threads": 2,
        },
        "sampling": {"max_tokens": 4, "temperature": 0.7, "seed": 0},
        "engine": {
            "max_model_len": 4096,
            "dtype": "bfloat16",
            "enforce_eager": True,
            "cpu_kvcache_space_gb": 1,
            "max_num_seqs": 4,
        },
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return vconfig.load(overrides=base)


def build_shard(root: Path, n: int, config: dict, size: str = "64x48") -> tuple[Path, Path]:
    """``n`` distinct clips (each its own seed of a noise source) in one shard, frames extracted."""
    records = []
    for i in range(n):
        name = f"clips/c{i:03d}.mp4"
        if not (root / name).exists():
            make_video(
                root / name, seconds=2, size=size, rate=4, source="cellauto"
            )  # random seed: distinct clips
        records.append({"video": [name], "conversation": [{"from": "human", "value": ""}]})
    shard = write_records(root / f"shard{n}.jsonl", records)
    manifest = root / f"manifest{n}.json"
    frames = vsettings.frames_settings({**config, "media_root": str(root)}, "0")
    frames["cache_dir"] = str(root / "cache")
    extract_frames(str(shard), str(manifest), frames, threads=2)
    return shard, manifest


def store_of(out: Path) -> Path:
    """Each output file's own result store, so a clean build of the same shard starts from nothing."""
    return Path(out).with_suffix(".store")


def start_job(shard, manifest, out, settings, log_path, env=None) -> subprocess.Popen:
    """A caption job as its own process; all it prints (vLLM logs to stdout too) goes to its log file.
    ``env``: variables to set (an empty value removes the variable)."""
    settings = {**settings, "store": str(store_of(out))}
    cmd = [sys.executable, "-c", JOB, str(shard), str(manifest), str(out), json.dumps(settings)]
    job_env = {**os.environ, **(env or {})}
    job_env = {k: v for k, v in job_env.items() if v != "" or k not in (env or {})}
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=job_env)


def run_job(*args, **kwargs) -> tuple[dict, int]:
    """Run a caption job to its end; its stats and its peak RSS in bytes (wait4's ru_maxrss)."""
    proc = start_job(*args, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, Path(args[4]).read_text()[-3000:]
    return json.loads(Path(f"{args[2]}.test-stats").read_text()), usage.ru_maxrss * 1024


def stored_results(out: Path) -> int:
    """Answers the job has put in its result store so far (one file each, written whole)."""
    return sum(1 for _ in store_of(out).glob("*/*.json"))


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the job ended before the condition was met"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def engine_cores(pid: int) -> list[psutil.Process]:
    """The job's vLLM engine core process(es) (vLLM names them VLLM::EngineCore)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie, meanwhile
            continue
    return found


def test_peak_memory_is_flat_in_the_shard_size(tiny_model, tmp_path):
    """200 distinct records of 16 frames of 448x448 vs 20 in one caption job each: peak RSS within 1.3x (the
    window, not the shard, bounds what is held; holding all 200 would add ~1.9 GB of uint8 frames alone).
    The frames are written into the cache directly: the frames step is not what is measured here."""
    config = job_config(tiny_model)
    peaks = {}
    for n in (20, 200):
        shard, manifest = synthetic_shard(tmp_path, n, frames=16, width=448, height=448)
        stats, peaks[n] = run_job(
            shard,
            manifest,
            tmp_path / f"out{n}.jsonl",
            vsettings.caption_job(config),
            tmp_path / f"job{n}.log",
        )
        assert stats["ok"] + stats["truncated"] + stats["degenerate"] == n, stats
    print(f"peak RSS: 20 records {peaks[20] / 2**20:.0f} MiB, 200 records {peaks[200] / 2**20:.0f} MiB")
    assert peaks[200] <= 1.3 * peaks[20], peaks


def test_killed_job_and_dead_engine_resume_to_identical_bytes(tiny_model, tmp_path):
    """kill -9 of a job after some records, then a job whose engine core is killed (the job must fail and
    write nothing), then a rerun: it sends only the missing records, and the file equals a clean build's."""
    # one sequence at a time and longer captions: records finish one by one, with time to kill between (the
    # engine-core layout generates ~14x slower on 2 CPU cores: 14 records of 32 tokens keep its part short).
    # In-process a record takes ~0.2 s, so the first kill may land several records late on a loaded machine:
    # killing from 3 leaves room for 8 late ones before the second job would find nothing left to do
    config = job_config(tiny_model, engine={"max_num_seqs": 1}, sampling={"max_tokens": 32})
    settings = vsettings.caption_job(config)
    n = 14
    shard, manifest = build_shard(tmp_path, n, config)
    out, log = tmp_path / "out.jsonl", tmp_path / "job.log"

    job = start_job(shard, manifest, out, settings, log)  # engine in-process (CPU default)
    wait_for(lambda: stored_results(out) >= 3, 300, job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    first = stored_results(out)

    # engine core in its own process, as on GPUs: killing it is an engine failure, not 12 record errors
    job = start_job(shard, manifest, out, settings, log, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    wait_for(lambda: engine_cores(job.pid), 300, job)
    wait_for(lambda: stored_results(out) >= first + 2, 300, job)
    for core in engine_cores(job.pid):
        core.kill()
    assert job.wait(timeout=120) != 0
    assert not out.exists() and "EngineFailure" in log.read_text()
    done = stored_results(out)
    assert done >= first + 2

    # the resume in the GPU layout too (its engine core is a process of its own), the clean build in-process:
    # the same bytes whichever layout answered
    resume_log = tmp_path / "resume.log"
    stats, _ = run_job(
        shard, manifest, out, settings, resume_log, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    )
    assert "(EngineCore pid=" in resume_log.read_text()
    assert stats["stored"] == done and stats["requests"] == n - done
    assert stored_results(out) == n  # the store outlives the job: a rebuild sends nothing
    clean, clean_log = tmp_path / "clean.jsonl", tmp_path / "clean.log"
    run_job(shard, manifest, clean, settings, clean_log)
    assert "(EngineCore pid=" not in clean_log.read_text()
    assert out.read_bytes() == clean.read_bytes()


def test_ten_minute_clip_with_default_engine_limits(tiny_model, tmp_path):
    """A 10-minute clip at 1 fps plans more vision tokens than vLLM's default step holds; the engine's
    limits come from the budget, so it is captioned, not refused as an engine error."""
    make_video(tmp_path / "long.mp4", seconds=600, size="112x112", rate=1, source="testsrc2")
    write_records(tmp_path / "shard.jsonl", [{"video": ["long.mp4"]}])
    config = job_config(
        tiny_model,
        frames={"fps": 1.0, "max_frames": 768},
        engine={"max_model_len": 51200},
        long_video={"mode": "single"},  # one prompt: this test is about its engine limits, not windows
        media_root=str(tmp_path),
    )
    assert config["engine"]["max_num_batched_tokens"] is None  # the default: sized from the budget
    frames = vsettings.frames_settings(config, "0")
    frames["cache_dir"] = str(tmp_path / "cache")
    extract_frames(str(tmp_path / "shard.jsonl"), str(tmp_path / "m.json"), frames)
    entry = json.loads((tmp_path / "m.json").read_text())["records"][0]
    assert len(entry["videos"][0]["meta"]["frames_indices"]) >= 600
    stats, _ = run_job(
        tmp_path / "shard.jsonl",
        tmp_path / "m.json",
        tmp_path / "out.jsonl",
        vsettings.caption_job(config),
        tmp_path / "job.log",
    )
    meta = json.loads((tmp_path / "out.jsonl").read_text())["caption_meta"]
    assert meta["status"] in CAPTIONED, meta
    assert meta["prompt_tokens"] > 4096  # more than vLLM's own default step would have admitted


def test_too_small_batched_tokens_is_a_config_error(tiny_model):
    config = job_config(tiny_model, engine={"max_num_batched_tokens": 512})
    with pytest.raises(vconfig.ConfigError, match=r"max_num_batched_tokens 512 .* at least \d+"):
        vsettings.caption_job(config)


def test_cpu_build_on_a_node_with_gpus_is_refused(tiny_model, tmp_path, monkeypatch):
    """GPUs visible (simulated device list) but only vLLM's CPU build installed: the job fails at once with
    a message saying so, instead of captioning on the CPU for hours."""
    from vidcap.caption import caption_shard
    from vidcap.engine_build import EngineBuildError

    config = job_config(tiny_model)
    shard, manifest = build_shard(tmp_path, 2, config)
    monkeypatch.setenv("VIDCAP_GPU_IDS", "0,1")
    monkeypatch.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path / "locks"))
    with pytest.raises(EngineBuildError, match="CPU build"):
        caption_shard(str(shard), str(manifest), str(tmp_path / "out.jsonl"), vsettings.caption_job(config))
    assert not (tmp_path / "out.jsonl").exists()
    # on purpose: engine.device cpu runs the CPU build whatever the node has
    cpu = vsettings.caption_job(job_config(tiny_model, engine={"device": "cpu"}))
    cpu["store"] = str(tmp_path / "out.jsonl.store")
    caption_shard(str(shard), str(manifest), str(tmp_path / "out.jsonl"), cpu)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_frames_deleted_from_the_cache_are_extracted_again(tiny_model, tmp_path):
    """frames.keep true, the cache deleted after the frames step (then e.g. the prompt changed): the caption
    job extracts the frames again instead of failing with FileNotFoundError."""
    import shutil

    config = job_config(tiny_model, media_root=str(tmp_path))
    shard, manifest = build_shard(tmp_path, 3, config)
    shutil.rmtree(tmp_path / "cache")
    settings = vsettings.caption_job(config, "0")
    settings["frames_step"]["cache_dir"] = str(tmp_path / "cache")
    stats, _ = run_job(shard, manifest, tmp_path / "out.jsonl", settings, tmp_path / "job.log")
    assert stats["ok"] + stats["truncated"] + stats["degenerate"] == 3, stats
    assert len(list((tmp_path / "cache").rglob("*.mkv"))) == 3


def test_two_caption_jobs_start_at_once_on_an_empty_cache(tiny_model, tmp_path):
    """Two jobs on one node (two GPU slots) start their engines together with torch.compile on and no cache
    yet: each compiles into its slot's own cache folder (vidcap.engine_cache), both finish, same captions."""
    config = job_config(tiny_model, engine={"enforce_eager": False, "device": "cpu"})
    settings = vsettings.caption_job(config)
    shard, manifest = build_shard(tmp_path, 2, config)
    locks = tmp_path / "locks"
    env = {"VIDCAP_GPU_IDS": "0,1", "VIDCAP_GPU_LOCK_DIR": str(locks)}
    for name in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "SLURM_JOB_ID"):
        env[name] = ""  # unset below: the job must choose the folders
    outs = [tmp_path / f"out{i}.jsonl" for i in range(2)]
    jobs = [
        start_job(shard, manifest, out, settings, tmp_path / f"job{i}.log", env=env)
        for i, out in enumerate(outs)
    ]
    for i, job in enumerate(jobs):
        assert job.wait(timeout=600) == 0, (tmp_path / f"job{i}.log").read_text()[-3000:]
    logs = [(tmp_path / f"job{i}.log").read_text() for i in range(2)]
    taken = sorted(re.search(r"GPU slot\(s\) (\d) taken", log).group(1) for log in logs)
    assert taken == ["0", "1"]  # at once: one slot each
    for slot, log in zip(("0", "1"), sorted(logs, key=lambda text: "GPU slot(s) 1 taken" in text)):
        # each engine compiled into its own slot's folder (vLLM's AOT-compiled model)
        compiled = [
            p for p in (locks / f"cache-gpu{slot}" / "vllm" / "torch_compile_cache").rglob("*") if p.is_file()
        ]
        assert compiled, f"nothing compiled into cache-gpu{slot}"
        assert f"saved AOT compiled function to {locks / f'cache-gpu{slot}'}" in log
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_a_hung_engine_fails_the_job_and_frees_its_gpu_slot(tiny_model, tmp_path):
    """The GPU layout (engine core in its own process, started with spawn, which inherits no lock): the core
    is frozen (SIGSTOP, as a hung NCCL collective would leave it) mid-shard. engine.stall_timeout fails the
    job (no result written, finished records stored), and the GPU slot is freed only once the core is gone."""
    config = job_config(
        tiny_model,
        engine={"max_num_seqs": 1, "stall_timeout": 5, "device": "cpu"},
        sampling={"max_tokens": 64},
    )
    settings = vsettings.caption_job(config)
    shard, manifest = build_shard(tmp_path, 8, config)
    out, log = tmp_path / "out.jsonl", tmp_path / "job.log"
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VIDCAP_GPU_IDS": "0",
        "VIDCAP_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "SLURM_JOB_ID": "",
    }
    job = start_job(shard, manifest, out, settings, log, env=env)
    wait_for(lambda: engine_cores(job.pid), 300, job)
    wait_for(lambda: stored_results(out) >= 1, 300, job)
    cores = engine_cores(job.pid)
    for core in cores:
        core.suspend()
    frozen = time.monotonic()
    assert job.wait(timeout=120) != 0
    failed_after = time.monotonic() - frozen
    text = log.read_text()
    assert "engine made no progress for 5 s" in text and "EngineFailure" in text, text[-3000:]
    assert not out.exists() and stored_results(out) >= 1
    assert failed_after < 60, failed_after  # not the Slurm time limit
    assert not any(core.is_running() and core.status() != psutil.STATUS_ZOMBIE for core in cores)
    # the slot was held until the frozen core had been killed, then freed: the next job gets it at once
    from vidcap.gpus import device_slots

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SLURM_JOB_ID", raising=False)
        mp.setenv("VIDCAP_GPU_IDS", "0")
        mp.setenv("VIDCAP_GPU_LOCK_DIR", str(tmp_path / "locks"))
        with device_slots(1, timeout=0) as ids:
            assert ids == ["0"]
