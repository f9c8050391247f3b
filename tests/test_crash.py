"""kill -9 in the middle of a build, then rerun: the output equals an uninterrupted build's.

The subject is Snakemake's recovery (the lock, half-done jobs, rerun-incomplete), not the engine: caption jobs
use the session's ``vllm serve`` (engine.backend server), so the three builds start no engine of their own.
A job killed with its in-process engine is tests/test_caption_jobs.py's; scancel of one, tests/test_slurm.py's.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    REPO,
    SERVER_KEY_ENV,
    SNAKEMAKE,
    make_video,
    run_snakemake,
    tiny_config,
    write_records,
)

pytestmark = pytest.mark.slow


def setup_project(work: Path) -> None:
    records = []
    for i, source in enumerate(["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc"]):
        make_video(work / f"clips/c{i}.mp4", seconds=4, size="320x240", rate=25, source=source)
        records.append({"video": [f"clips/c{i}.mp4"], "conversation": [{"from": "human", "value": ""}]})
    write_records(work / "records.json", records)


def kill_when(work: Path, config: dict, ready, timeout: float = 300) -> None:
    """Start the build, wait until ``ready(work)`` holds, then SIGKILL the whole process group."""
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--cores",
        "2",
        "--resources",
        "gpu=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready(work):
            assert proc.poll() is None, "the build ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def frames_running(work: Path) -> bool:
    return any((work / "results/logs/extract_frames").glob("*.log"))


def caption_running(work: Path) -> bool:
    logs = list((work / "results/logs/caption_shard").glob("*.log"))
    return any("to caption" in log.read_text(errors="replace") for log in logs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, tiny_server):
    work = tmp_path_factory.mktemp("reference")
    setup_project(work)
    server = {"backend": "server", "url": tiny_server, "api_key_env": SERVER_KEY_ENV}
    config = tiny_config(tiny_model, shards=2, engine=server)
    run_snakemake(work, config)
    return config, (work / "captions.json").read_bytes()


@pytest.mark.parametrize(
    "kill_point", [frames_running, caption_running], ids=["during-frames", "during-caption"]
)
def test_rerun_after_kill_matches_uninterrupted_build(tmp_path, reference, kill_point):
    config, expected = reference
    setup_project(tmp_path)
    kill_when(tmp_path, config, kill_point)
    assert not (tmp_path / "captions.json").exists()
    # the documented recovery: remove the dead run's lock, rerun (jobs it left half-done are rerun)
    run_snakemake(tmp_path, config, "--unlock")
    run_snakemake(tmp_path, config)  # profiles/default sets rerun-incomplete
    assert (tmp_path / "captions.json").read_bytes() == expected
