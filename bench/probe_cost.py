"""What a short clip's frames step costs beyond a plain decode, in instructions (load-independent).

    .venv/bin/python bench/probe_cost.py                      # the 10 s 720p clip of bench/frames.py
    .venv/bin/python bench/probe_cost.py --video clip.mp4 --calls 5

Wall and CPU seconds on a shared 2-core machine swing by ±10 % between turns, more than the costs in
question. valgrind's callgrind counts the instructions a process executes instead: the same count for
the same binary and input whatever else the machine runs. Each row runs under callgrind:
  floor      ffmpeg decodes every frame to nothing (as in bench/frames.py)
  decode     the ffmpeg command vidcap.frames.cached_sample runs for the clip (recorded, replayed
             with its filter graph: select, scale, RGB, raw frames out)
  ffprobe    the ffprobe command of the ffprobe reading (vidcap.probe, ``in_process=False``)
  in-process vidcap's own work per clip in the Python process (cache key, PyAV reading or the ffprobe
             output's parsing, planning, sidecar): ``--calls`` calls of cached_sample minus none,
             divided by the calls; children (ffmpeg, ffprobe) are not counted there
Totals: the clip with the in-process reading (PyAV) = decode + in-process; with the ffprobe reading
(the code before) = decode + ffprobe + in-process. Needs valgrind (Debian package); ~5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from frames import PIXELS, floor_command, make_video  # bench/frames.py: its clips, sizes and floor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARAMS = {**PIXELS, "backend": "ffmpeg", "fps": 2.0, "max_vision_tokens": None, "cache_codec": "npy"}


def callgrind(cmd: list[str], stdin: bytes | None = None) -> int:
    """Instructions ``cmd`` executes (its own process; children not traced)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            input=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    match = re.search(rb"Collected : (\d+)", proc.stderr)
    if not match:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-2000:])
    return int(match.group(1))


def child_script(video: str, reader: str, body: str) -> str:
    """A Python script for a child process: ``clip()`` runs cached_sample on ``video`` with this reader
    (``ffprobe``: PyAV's reading switched off), then ``body``."""
    return f"""
import json, pathlib, subprocess, sys, tempfile
sys.path.insert(0, {str(REPO)!r})
from vidcap import decode, demux
from vidcap.frames import cached_sample
if {reader!r} == "ffprobe":
    demux.read = lambda *a: None
def clip():
    with tempfile.TemporaryDirectory() as d:
        cached_sample({video!r}, "video", {PARAMS!r}, pathlib.Path(d))
{body}"""


def record(video: str, reader: str) -> tuple[list[list[str]], list[str]]:
    """The commands (argv) cached_sample starts for ``video`` with this reader, and the filter graphs
    it feeds to its prestarted ffmpeg."""
    body = """
seen, graphs = [], []
real_init, real_feed = subprocess.Popen.__init__, decode.Prestarted.feed
def init(self, args, *a, **k):
    seen.append(list(map(str, args)))
    return real_init(self, args, *a, **k)
def feed(self, graph):
    graphs.append(graph)
    return real_feed(self, graph)
subprocess.Popen.__init__, decode.Prestarted.feed = init, feed
clip()
print(json.dumps([seen, graphs]))
"""
    script = child_script(video, reader, body)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    seen, graphs = json.loads(out)
    return seen, graphs


def decode_command(video: str) -> tuple[list[str], bytes]:
    """The decoding ffmpeg as vidcap runs it (its stdout was the cache file), with the graph it was fed."""
    seen, graphs = record(video, "pyav")
    argv = next(a for a in seen if a[0] == "ffmpeg")
    assert "pipe:0" in argv and len(graphs) == 1, (argv, len(graphs))
    return argv, graphs[0].encode()  # its frames (pipe:1) go to /dev/null


def in_process(video: str, reader: str, calls: int) -> int:
    """vidcap's own instructions per clip (``calls`` calls minus none)."""
    script = child_script(video, reader, "for _ in range(int(sys.argv[1])):\n    clip()\n")
    with_calls = callgrind([sys.executable, "-c", script, str(calls)])
    without = callgrind([sys.executable, "-c", script, "0"])
    return (with_calls - without) // calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--video", default="/tmp/vidcap-bench/10s-720p.mp4")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    video = str(Path(args.video).resolve())
    if not Path(video).exists():
        make_video(Path(video), 10, "1280x720")
    ffprobe = next(a for a in record(video, "ffprobe")[0] if a[0] == "ffprobe")
    decode_argv, graph = decode_command(video)
    counts = {
        "floor": callgrind(floor_command(video)),
        "decode": callgrind(decode_argv, graph),
        "ffprobe": callgrind(ffprobe),
        "in-process, PyAV reading": in_process(video, "pyav", args.calls),
        "in-process, ffprobe reading": in_process(video, "ffprobe", args.calls),
    }
    counts["clip, PyAV reading"] = counts["decode"] + counts["in-process, PyAV reading"]
    counts["clip, ffprobe reading"] = (
        counts["decode"] + counts["ffprobe"] + counts["in-process, ffprobe reading"]
    )
    table = pd.DataFrame(
        {
            "instructions_M": [round(n / 1e6, 1) for n in counts.values()],
            "x_floor": [round(n / counts["floor"], 3) for n in counts.values()],
        },
        index=pd.Index(list(counts), name=Path(video).name),
    )
    print(table.to_string())


if __name__ == "__main__":
    main()
