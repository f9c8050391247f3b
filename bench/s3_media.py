"""Media on S3: stage a local copy then decode, or decode straight from a presigned HTTP URL?

    .venv/bin/python bench/s3_media.py                 # 3 s 320x240 clips and one 20 s 1280x720
    .venv/bin/python bench/s3_media.py --repeat 5

Starts moto's S3 server on 127.0.0.1 (a local server: no network latency, so HTTP's per-request cost is
a lower bound for a real bucket), uploads the clips, and times per clip, median of --repeat runs:
  stage   boto3 download_file to a local file (what Snakemake's storage plugin does), the sha256 the
          frame cache key takes of a staged copy (vidcap.object_storage.content_identity), then
          vidcap's two reads of the file: PyAV lists the packets (vidcap.probe) and ffmpeg decodes
          at 2 fps, scaled (vidcap.decode)
  http    the same two reads on a presigned URL (each opens the URL; seeks become range requests).
          vidcap.frames.sample_video itself refuses a URL (its probe stats the file first), so this
          is the cost an HTTP mode would have, measured with the same two readers
  vidcap  vidcap.frames.sample_video on the staged copy, for scale
It prints the server's GET count per clip for each method: a real bucket charges a round trip for each.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av
import boto3

from vidcap.demo import make_clip
from vidcap.frames import sample_video
from vidcap.object_storage import content_identity

CLIPS = [  # name, lavfi source, seconds
    ("small.mp4", "testsrc2=size=320x240:rate=25", 3),
    ("hd.mp4", "testsrc2=size=1280x720:rate=25", 20),
]
PARAMS = {
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 64,
    "min_pixels": 3136,
    "max_pixels": 200704,
    "max_vision_tokens": 16384,
    "patch_factor": 28,
}


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
        )
    return proc, f"http://127.0.0.1:{port}"


def gets(log: Path) -> int:
    return log.read_text(errors="replace").count("GET /")


def two_reads(source: str) -> int:
    """What vidcap's frames step reads: the packet list (PyAV), then a decode at 2 fps (ffmpeg)."""
    with av.open(source) as container:
        packets = sum(1 for p in container.demux(video=0) if p.size)
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", source, "-vf", "fps=2,scale=448:-2", "-f", "null", "-"]
    subprocess.run(cmd, check=True)
    return packets


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vidcap-s3bench-"))
    log = work / "moto.log"
    proc, url = start_server(log)
    try:
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="bench", aws_secret_access_key="bench")
        for _ in range(100):
            try:
                s3.create_bucket(Bucket="bench")
                break
            except Exception:  # noqa: BLE001 -- not listening yet
                time.sleep(0.2)
        results = {}
        for name, source, seconds in CLIPS:
            clip = make_clip(work / name, source, seconds)
            s3.upload_file(str(clip), "bench", name)
            presigned = s3.generate_presigned_url("get_object", Params={"Bucket": "bench", "Key": name})
            staged = work / "staged" / name
            staged.parent.mkdir(exist_ok=True)
            rows = {"download": [], "sha256": [], "stage": [], "http": [], "vidcap": []}
            get_counts = {}
            for _ in range(args.repeat):
                before = gets(log)
                rows["download"].append(timed(s3.download_file, "bench", name, str(staged)))
                rows["sha256"].append(timed(content_identity, f"s3://bench/{name}", staged))
                reads = timed(two_reads, str(staged))
                rows["stage"].append(rows["download"][-1] + rows["sha256"][-1] + reads)
                rows["vidcap"].append(timed(sample_video, str(staged), PARAMS))
                time.sleep(0.3)  # the server's log is written after the response
                get_counts["stage"] = gets(log) - before
                before = gets(log)
                rows["http"].append(timed(two_reads, presigned))
                time.sleep(0.3)
                get_counts["http"] = gets(log) - before
            packets = two_reads(presigned)
            assert packets == two_reads(str(staged))  # both read the whole stream
            results[name] = {
                "mb": round(clip.stat().st_size / 2**20, 2),
                "packets": packets,
                **{k: round(statistics.median(v), 3) for k, v in rows.items()},
                "gets": get_counts,
            }
            print(json.dumps({name: results[name]}), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
