"""Test helpers: synthetic media made with ffmpeg's lavfi sources, and real Snakemake runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from vidcap.demo import make_clip

REPO = Path(__file__).resolve().parents[1]
# a caption was written: the tiny random-weight models' gibberish may also trip the degeneration checks
# (vidcap.quality), which tests of other things must not mistake for a failure
CAPTIONED = ("ok", "truncated", "degenerate")
# the jobs one changed shard plans: its frames, caption and summary jobs, then the merge and the report
ONE_SHARD_JOBS = {
    "extract_frames": 1,
    "caption_shard": 1,
    "summarize_shard": 1,
    "merge_captions": 1,
    "build_report": 1,
    "all": 1,
}
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")


def make_video(
    path: str | os.PathLike,
    seconds: float = 1.0,
    size: str = "64x48",
    rate: int = 8,
    source: str = "testsrc2",
    extra: list[str] | None = None,
) -> Path:
    """Encode a small H.264 clip from a lavfi source (argument list, no shell)."""
    return make_clip(Path(path), f"{source}=size={size}:rate={rate}", seconds, gop=rate, extra=extra or ())


def write_records(path: str | os.PathLike, records: list) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".jsonl"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def build_tiny_model(out: str | os.PathLike, arch: str = "qwen2_vl") -> Path:
    """A tiny random-weight checkpoint of ``arch`` built locally in ``out`` (``python -m vidcap tiny-model``)."""
    subprocess.run(
        [sys.executable, "-m", "vidcap", "tiny-model", str(out), "--arch", arch],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return Path(out)


def tiny_config(model_dir: str | os.PathLike, **overrides) -> dict:
    """Workflow config for the tiny random model on the CPU build of vLLM (captions are gibberish)."""
    config = {
        "input": "records.json",
        "output": "captions.json",
        "results": "results",
        "shards": 2,
        "model": str(model_dir),
        "frames": {
            "fps": 2.0,
            "min_frames": 4,
            "max_frames": 8,
            "min_pixels": 3136,
            "max_pixels": 12544,
            "threads": 2,
        },
        "sampling": {"max_tokens": 8, "temperature": 0.0, "seed": 0},
        "engine": {
            "max_model_len": 4096,
            "dtype": "bfloat16",
            "enforce_eager": True,
            "cpu_kvcache_space_gb": 1,
            "threads": 2,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def run_snakemake(
    workdir: str | os.PathLike,
    config: dict,
    *args: str,
    check: bool = True,
    timeout: float = 900,
    gpus: int = 1,
    snakefile: Path = REPO / "Snakefile",
) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` with ``config`` written to workdir/config.yaml."""
    workdir = Path(workdir)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = [
        SNAKEMAKE,
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        "--resources",
        f"gpu={gpus}",
        "--nocolor",
        *args,
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(workdir: str | os.PathLike, config: dict) -> Counter:
    """Jobs per rule that a dry run would execute now."""
    proc = run_snakemake(workdir, config, "--dry-run")
    return jobs_run(proc.stdout + proc.stderr)


def jobs_run(output: str) -> Counter:
    """Count the jobs per rule announced in Snakemake's output (``rule x:`` / ``localrule x:``)."""
    return Counter(re.findall(r"^(?:local)?rule (\w+):$", output, flags=re.M))


def synthetic_shard(
    work: str | os.PathLike,
    n: int,
    frames: int = 4,
    width: int = 448,
    height: int = 448,
    distinct: int | None = None,
) -> tuple[Path, Path]:
    """A shard of ``n`` video records whose frames sit in the cache already, as the frames step leaves them:
    noise frames (``distinct`` files, records cycling over them), a manifest with the source metadata."""
    import numpy as np

    from vidcap.atomic import write_json
    from vidcap.records import record_digest

    work = Path(work)
    rng = np.random.default_rng(0)
    videos = []
    for i in range(min(n, distinct or n)):
        path = work / "cache" / f"synthetic-{width}x{height}x{frames}-{i:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            np.save(path, rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8))
        meta = {
            "fps": 30.0,
            "duration": frames / 2,
            "total_num_frames": frames * 15,
            "width": width,
            "height": height,
            "frames_indices": [j * 15 for j in range(frames)],
        }
        videos.append({"path": f"v{i}.mp4", "frames": str(path), "meta": meta})
    records = [
        {"video": [f"v{i}.mp4"], "conversation": [{"from": "human", "value": ""}], "n": i} for i in range(n)
    ]
    shard, manifest = write_records(work / f"shard{n}.jsonl", records), work / f"manifest{n}.json"
    entries = [
        {"digest": record_digest(r), "videos": [videos[i % len(videos)]], "images": [], "error": None}
        for i, r in enumerate(records)
    ]
    write_json(manifest, {"shard": "0", "records": entries})
    return shard, manifest


def make_shots_video(
    path: str | os.PathLike,
    cuts: tuple[float, ...] = (50, 110),
    seconds: float = 180,
    size: str = "64x64",
    rate: int = 4,
) -> Path:
    """A video of len(cuts) + 1 shots, each from another lavfi source, cut at ``cuts`` seconds; the MP4 index
    sits at the start (+faststart), so cutting the file's tail leaves its head readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = ["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "yuvtestsrc"]
    bounds = [0, *cuts, seconds]
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error"]
    for source, start, end in zip(sources, bounds, bounds[1:]):
        cmd += ["-f", "lavfi", "-t", str(end - start), "-i", f"{source}=size={size}:rate={rate}"]
    shots = len(bounds) - 1
    graph = "".join(f"[{i}:v]" for i in range(shots)) + f"concat=n={shots}:v=1[v]"
    cmd += ["-filter_complex", graph, "-map", "[v]", "-pix_fmt", "yuv420p", "-c:v", "libx264"]
    cmd += ["-g", str(rate * 2), "-movflags", "+faststart", "file:" + str(path.resolve())]
    subprocess.run(cmd, check=True)
    return path


def cut_tail(source: str | os.PathLike, target: str | os.PathLike, at_seconds: float) -> Path:
    """A copy of ``source`` cut at the first video packet at or after ``at_seconds`` (a truncated download)."""
    rows = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos"]
        + ["-of", "csv=p=0", str(source)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    pos = next(int(p) for t, p in (r.split(",")[:2] for r in rows) if float(t) >= at_seconds)
    target = Path(target)
    target.write_bytes(Path(source).read_bytes()[:pos])
    return target


# the test server's key: a made-up one, which tests look for in everything a build writes; jobs read it from
# the variable engine.api_key_env names
SERVER_KEY_ENV = "VIDCAP_TEST_SERVER_KEY"
SERVER_API_KEY = "sk-vidcap-test-6f1d2a9c"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def vllm_server(
    model: str | os.PathLike, log: Path, max_model_len: int = 1024, limits: dict | None = None, api_key=None
):
    """A real ``vllm serve`` (OpenAI API server) of ``model`` on a free localhost port (requiring
    ``api_key`` when given); yields its URL."""
    import signal
    import time

    from vidcap.server import server_ready

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--dtype", "float32"]
    cmd += ["--max-model-len", str(max_model_len), "--enforce-eager", "--seed", "0"]
    cmd += ["--limit-mm-per-prompt", json.dumps(limits or {"video": 1, "image": 2})]
    cmd += ["--mm-processor-cache-gb", "0", "--distributed-executor-backend", "uni"]
    cmd += ["--trust-request-mm-kwargs"]
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not server_ready(url, timeout=2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not start:\n{Path(log).read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def requests_sent(results: str | os.PathLike, before: dict[str, dict]) -> int:
    """Requests the caption jobs that ran since ``before`` (:func:`caption_stats`) sent to the engine."""
    return sum(s["requests"] for name, s in caption_stats(results).items() if s != before.get(name))


def caption_stats(results: str | os.PathLike) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in Path(results, "captions").glob("*.stats.json")}


def make_speech_clip(path: str | os.PathLike, text: str, pad: float = 0.5, size: str = "64x48") -> Path:
    """A lavfi video with real synthesised speech under it: espeak-ng says ``text`` after ``pad`` seconds of
    silence, and the clip runs ``pad`` seconds past the speech (argument lists, no shell)."""
    path = Path(path)
    wav = path.with_suffix(".speech.wav")
    subprocess.run(["espeak-ng", "-w", str(wav), "--", text], check=True, capture_output=True)
    speech = f"adelay={int(pad * 1000)}:all=1,apad=pad_dur={pad}"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=8"]
    cmd += ["-i", str(wav), "-filter_complex", f"[1:a]{speech}[a]", "-map", "0:v", "-map", "[a]"]
    cmd += ["-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "8", "-c:a", "aac", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    wav.unlink()
    return path


def make_music_clip(path: str | os.PathLike, seconds: float = 2.0, size: str = "64x48") -> Path:
    """A lavfi video over a two-tone chord (ffmpeg's sine sources mixed): sound that is not speech."""
    path = Path(path)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=8"]
    for hz in (262, 392):
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={hz}:sample_rate=16000:duration={seconds}"]
    cmd += ["-filter_complex", "[1:a][2:a]amix=inputs=2[a]", "-map", "0:v", "-map", "[a]", "-t", str(seconds)]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "8", "-c:a", "aac", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path
