"""Cost proportional to change: a built dataset grown, resharded, edited, retried; counted in requests.

Real snakemake, ffmpeg and a real ``vllm serve`` of the tiny random Qwen2-VL (engine.backend server, one
server for the session, so caption jobs start no engine: captions are gibberish). Requests are counted
from the caption jobs' own stats (``requests``: what was sent; the rest came from the result store).
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    CAPTIONED,
    ONE_SHARD_JOBS,
    REPO,
    SERVER_API_KEY,
    SERVER_KEY_ENV,
    SNAKEMAKE,
    caption_stats,
    make_shots_video,
    make_video,
    planned_jobs,
    requests_sent,
    run_snakemake,
    tiny_config,
    vllm_server,
    write_records,
)

pytestmark = pytest.mark.slow

N = 20
ON_SERVER = {"backend": "server", "api_key_env": SERVER_KEY_ENV}  # the session's server needs its key
SOURCES = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "testsrc", "yuvtestsrc", "pal75bars"]


def record(i: int) -> dict:
    return {"video": [f"v{i:02d}.mp4"], "conversation": [{"from": "human", "value": ""}], "id": i}


def server_config(model, url, media: Path, **overrides) -> dict:
    """Media in a folder of their own (media_root), per-record prompts in ``question`` (keys.prompt)."""
    return tiny_config(
        model,
        shards=4,
        media_root=str(media),
        keys={"prompt": "question"},
        engine={"backend": "server", "url": url, "api_key_env": SERVER_KEY_ENV},
        **overrides,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model, tiny_server):
    root = tmp_path_factory.mktemp("incremental")
    media, work = root / "media", root / "work"
    for i in range(N + 2):  # two more clips for the appended records
        make_video(media / f"v{i:02d}.mp4", seconds=0.5 + (i % 3) * 0.5, source=SOURCES[i % len(SOURCES)])
    write_records(work / "records.json", [record(i) for i in range(N)])
    config = server_config(tiny_model, tiny_server, media)
    run_snakemake(work, config)
    assert sum(s["requests"] for s in caption_stats(work / "results").values()) == N
    return root, config


def output(work: Path) -> list[dict]:
    return json.loads((work / "captions.json").read_text(encoding="utf-8"))


def rebuild(work: Path, config: dict) -> int:
    before = caption_stats(work / "results")
    run_snakemake(work, config)
    return requests_sent(work / "results", before)


@pytest.fixture()
def project(built, tmp_path):
    """A copy of the built project whose media folder is where the build saw it (the copy moves the
    original aside for the test, so media_root and every frame-cache key stay the same)."""
    root, config = built
    saved = tmp_path / "saved"
    shutil.copytree(root, saved, symlinks=True, copy_function=shutil.copy2)
    yield root / "work", dict(config)
    shutil.rmtree(root)
    shutil.move(saved, root)


def test_appending_ten_percent_sends_only_the_new_records(project):
    work, config = project
    before = (work / "captions.json").read_bytes()
    old = output(work)
    write_records(work / "records.json", [record(i) for i in range(N + 2)])
    assert rebuild(work, config) == 2
    out = output(work)
    assert [r["id"] for r in out] == list(range(N + 2))
    assert out[:N] == old and all(r["caption_meta"]["status"] in CAPTIONED for r in out[N:])
    # every old record's bytes: the new JSON array is the old one, two elements added before its "]"
    assert (work / "captions.json").read_bytes().startswith(before.rstrip()[:-1].rstrip())


def test_resharding_sends_nothing_and_changes_no_byte(project):
    work, config = project
    before = (work / "captions.json").read_bytes()
    assert rebuild(work, {**config, "shards": 6}) == 0
    assert (work / "captions.json").read_bytes() == before


def test_editing_three_prompts_sends_three_and_a_new_seed_sends_all(project):
    work, config = project
    records = [record(i) for i in range(N)]
    for i in (2, 9, 15):
        records[i]["question"] = "What colours are there?"
    write_records(work / "records.json", records)
    assert rebuild(work, config) == 3
    out = output(work)
    assert out[9]["conversation"][0]["value"] == "What colours are there?"
    assert rebuild(work, {**config, "sampling": {**config["sampling"], "seed": 1}}) == N


def test_replacing_a_video_under_media_root_reruns_its_frames_and_one_caption(project):
    work, config = project
    media = Path(config["media_root"])
    make_video(media / "v03.mp4", seconds=2, source="cellauto")  # another clip under the same name
    assert planned_jobs(work, config) == ONE_SHARD_JOBS
    assert rebuild(work, config) == 1
    assert planned_jobs(work, config) == {}


# ------------------------------------------------------------------------------ node failures, retry
def test_a_full_disk_fails_the_frames_job_and_writes_no_record_error(tiny_model, tiny_server, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    for i in range(2):
        make_video(tmp_path / f"v{i:02d}.mp4", seconds=1, source=SOURCES[i])
    write_records(tmp_path / "records.json", [record(i) for i in range(2)])
    cache = tmp_path / "results" / "frames" / "cache"
    cache.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(cache)], check=True)
    try:
        config = tiny_config(tiny_model, shards=1, engine={**ON_SERVER, "url": tiny_server})
        proc = run_snakemake(tmp_path, config, check=False)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stdout + proc.stderr
        assert not (tmp_path / "results" / "frames" / "0000.json").exists()  # no record error written
        assert not (tmp_path / "captions.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(cache)], check=True)  # space freed
        run_snakemake(tmp_path, config)
        assert [r["caption_meta"]["status"] in CAPTIONED for r in output(tmp_path)] == [True, True]
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_retry_resends_only_the_error_records(tiny_model, tiny_server, tmp_path):
    """A frames error (a decode over frames.timeout on the job's retry too) and a caption error (a server
    whose context is too small for one record): after fixing both, which changes nothing a job depends
    on, ``vidcap retry`` sends exactly those two records."""
    for i in range(6):
        big = {"size": "640x480", "seconds": 4} if i == 0 else {}
        make_video(tmp_path / f"v{i:02d}.mp4", **{"seconds": 1, **big}, source=SOURCES[i])
    # record 0's 8 frames of 448x336 (~760 prompt tokens) exceed the small server's context (384) even
    # halved, and fit the session server's (1024) whole
    config = tiny_config(tiny_model, shards=2, frames={"max_pixels": 150528}, engine=ON_SERVER)
    with vllm_server(tiny_model, tmp_path / "small.log", 384, api_key=SERVER_API_KEY) as small:
        on_small = {**config, "engine": {**config["engine"], "url": small}}
        write_records(tmp_path / "records.json", [record(i) for i in range(6) if i != 3])
        run_snakemake(tmp_path, on_small)
        # record 3 arrives on a loaded node: its decode runs over the timeout on both tries of its job
        write_records(tmp_path / "records.json", [record(i) for i in range(6)])
        run_snakemake(tmp_path, {**on_small, "frames": {**config["frames"], "timeout": 0.001}})
    out = output(tmp_path)
    assert [r["id"] for r in out if r["caption_meta"]["status"] == "error"] == [0, 3]
    assert out[3]["caption_meta"]["error"].startswith("v03.mp4: timeout")
    assert "maximum context length" in out[0]["caption_meta"]["error"]

    # both causes fixed: a normal timeout, a server with room; neither is anything a job depends on
    fixed = {**config, "engine": {**config["engine"], "url": tiny_server}}
    # no job that decodes or captions (the report shows the engine's URL, so it is made again)
    assert set(planned_jobs(tmp_path, fixed)) <= {"build_report", "all"}
    before = caption_stats(tmp_path / "results")
    retry = [str(Path(SNAKEMAKE).parent / "python"), "-m", "vidcap", "retry", "--configfile", "config.yaml"]
    retry += ["--", "--cores", "2", "--resources", "gpu=1"]
    proc = subprocess.run(retry, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 error record(s) in" in proc.stdout
    assert requests_sent(tmp_path / "results", before) == 2
    assert all(r["caption_meta"]["status"] in CAPTIONED for r in output(tmp_path))


# --------------------------------------------------------------- duplicates of a long video, kill -9
def long_project(work: Path, model, url) -> dict:
    make_shots_video(work / "shots.mp4", cuts=(50, 110), seconds=180)
    make_video(work / "short.mp4", seconds=1)
    records = [{"video": ["shots.mp4"], "id": 0}, {"video": ["short.mp4"], "id": 1}]
    records.append({"video": ["shots.mp4"], "id": 2})  # the same long video again
    write_records(work / "records.json", records)
    return tiny_config(
        model,
        shards=1,
        frames={"fps": 0.5, "max_frames": 8},
        long_video={"window_frames": 30, "min_window_frames": 15, "summary_max_tokens": 8},
        engine={**ON_SERVER, "url": url, "concurrency": 1},
    )


def start_build(work: Path, config: dict) -> subprocess.Popen:
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(work)]
    cmd += ["--configfile", str(work / "config.yaml"), "--cores", "2", "--resources", "gpu=1"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the build ended before the point waited for"
        assert time.monotonic() < deadline, "never reached"
        time.sleep(0.05)


def stored(work: Path) -> int:
    return sum(1 for _ in (work / "results" / "store").glob("*/*.json"))


def test_duplicate_long_videos_both_summarised_and_a_kill_resumes_to_the_same_bytes(
    tiny_model, tiny_server, tmp_path
):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir(), killed.mkdir()
    config = long_project(clean, tiny_model, tiny_server)
    run_snakemake(clean, config)
    out = output(clean)
    assert out[0]["caption"] == out[2]["caption"] and isinstance(out[0]["caption"], str)
    assert out[0]["caption_meta"]["summary"]["status"] in CAPTIONED
    assert out[2]["caption_meta"] == out[0]["caption_meta"]

    config = long_project(killed, tiny_model, tiny_server)
    build = start_build(killed, config)
    try:
        wait_until(lambda: stored(killed) >= 2, build)  # some windows answered, the shard not finished
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    assert not (killed / "captions.json").exists()
    run_snakemake(killed, config, "--unlock")
    run_snakemake(killed, config)
    assert (killed / "captions.json").read_bytes() == (clean / "captions.json").read_bytes()


# ------------------------------------------------------------------- a dry run beside a running build
def test_a_dry_run_after_an_input_edit_leaves_a_running_build_alone(tiny_model, tiny_server, tmp_path):
    for i in range(4):
        make_video(tmp_path / f"v{i:02d}.mp4", seconds=1, source=SOURCES[i])
    write_records(tmp_path / "records.json", [record(i) for i in range(3)])
    # long answers, one request at a time: the build is still captioning while the dry run parses
    config = tiny_config(
        tiny_model,
        shards=2,
        sampling={"max_tokens": 600, "min_tokens": 600, "temperature": 0.0, "seed": 0},
        engine={**ON_SERVER, "url": tiny_server, "concurrency": 1},
    )
    build = start_build(tmp_path, config)
    logs = tmp_path / "results" / "logs" / "caption_shard"
    wait_until(lambda: any("to caption" in p.read_text(errors="replace") for p in logs.glob("*.log")), build)
    shards = {p.name: p.read_bytes() for p in (tmp_path / "results" / "shards").glob("*.jsonl")}
    write_records(tmp_path / "records.json", [record(i) for i in range(4)])  # edited under the build
    dry = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile"]
        + [str(tmp_path / "config.yaml"), "-n", "--cores", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "is building" in dry.stderr and "not re-made from the input" in dry.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "results" / "shards").glob("*.jsonl")} == shards
    stdout, _ = build.communicate(timeout=600)
    assert build.returncode == 0, stdout[-3000:]
    assert [r["id"] for r in output(tmp_path)] == [0, 1, 2]  # what the build planned
    run_snakemake(tmp_path, config)  # the next build takes the edit
    assert [r["id"] for r in output(tmp_path)] == [0, 1, 2, 3]
