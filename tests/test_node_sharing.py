"""Jobs that share a node stay within what they booked: decoder threads, engine threads (fast tests)."""

import os
import subprocess

import pytest
from helpers import make_video

from vidcap import settings as vsettings
from vidcap.config import load, with_defaults
from vidcap.decode import ffmpeg_command, probe
from vidcap.engine import THREAD_VARS, prepare_environment
from vidcap.frames import decode_split


@pytest.mark.parametrize(
    "booked,decoder_threads,expected",
    [(4, 0, (4, 1)), (4, 2, (2, 2)), (1, 0, (1, 1)), (2, 8, (1, 2)), (8, 3, (2, 3))],
)
def test_decodes_fit_the_booked_cores(booked, decoder_threads, expected):
    decodes, per_decode = decode_split(booked, decoder_threads)
    assert (decodes, per_decode) == expected
    assert decodes * per_decode <= booked


def test_the_frames_rule_books_every_decoder_thread():
    config = load(
        overrides={"input": "x.jsonl", "model": "m", "frames": {"threads": 3, "decoder_threads": 2}}
    )
    assert vsettings.frames_job_threads(config) == 6
    assert decode_split(6, 2) == (3, 2)  # the job then runs 3 decodes of 2 threads: as configured
    config = load(overrides={"input": "x.jsonl", "model": "m"})
    assert vsettings.frames_job_threads(config) == config["frames"]["threads"]


def test_ffmpeg_runs_with_the_threads_it_was_given(tmp_path):
    clip = make_video(tmp_path / "c.mp4", seconds=1, size="64x48", rate=4)
    info = probe(str(clip), deadline=float("inf"))
    cmd = ffmpeg_command(str(clip), info, [0, 1], 64, 48, threads=1)
    assert cmd[cmd.index("-threads") + 1] == "1"
    assert cmd[cmd.index("-filter_threads") + 1] == "1"
    assert cmd[cmd.index("-filter_complex_threads") + 1] == "1"
    out = subprocess.run(cmd, capture_output=True, check=True).stdout  # a real ffmpeg accepts them
    assert len(out) == 2 * 64 * 48 * 3


def test_engine_threads_come_from_the_config(monkeypatch):
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    prepare_environment("no-such-model", with_defaults("engine", {"threads": 3}))
    assert all(os.environ[name] == "3" for name in THREAD_VARS)
    prepare_environment(
        "no-such-model", with_defaults("engine", {"threads": 3, "env": {"OMP_NUM_THREADS": "1"}})
    )
    assert os.environ["OMP_NUM_THREADS"] == "1"  # engine.env wins
