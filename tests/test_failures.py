"""Whose failure is it: the node's (fail the job), the engine's (fail the job) or the record's (its error)."""

import errno
import multiprocessing
import os

import pytest

from vidcap.backends import Answer
from vidcap.caption import FAILURES_BEFORE_ANY_SUCCESS, Breaker
from vidcap.decode import FrameError
from vidcap.engine import EngineFailure
from vidcap.failures import InfraError, infra_cause, raise_if_infra
from vidcap.shard_lock import claim, holder, only_looks


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        OSError(errno.EIO, os.strerror(errno.EIO)),
        OSError(errno.ESTALE, os.strerror(errno.ESTALE)),
        MemoryError(),
        # ffmpeg met the full disk while writing the cache file: only its message tells
        FrameError(f"ffmpeg failed: av_interleaved_write_frame(): {os.strerror(errno.ENOSPC)}"),
        FrameError("timeout: ffmpeg took more than 600 s"),
    ],
)
def test_node_failures_fail_the_job(exc):
    assert infra_cause(exc) is not None
    with pytest.raises(InfraError):
        raise_if_infra(exc, "video a.mp4")


@pytest.mark.parametrize(
    "exc",
    [
        FrameError("missing file"),
        FrameError("no video stream"),
        FrameError("Invalid data found when processing input"),
        OSError(errno.ENOENT, "No such file or directory"),
        ValueError("bad dimensions"),
    ],
)
def test_file_failures_stay_the_records(exc):
    assert infra_cause(exc) is None
    raise_if_infra(exc, "video a.mp4")  # does not raise


def test_a_timeout_is_the_nodes_on_the_first_attempt_and_the_videos_on_a_retry():
    exc = FrameError("timeout: ffmpeg took more than 600 s")
    assert infra_cause(exc, attempt=1) and infra_cause(exc, attempt=2) is None


def test_breaker_trips_on_failed_answers_before_any_success():
    breaker = Breaker()
    for _ in range(FAILURES_BEFORE_ANY_SUCCESS - 1):
        breaker.check(RuntimeError("server 404: model not found"))
    with pytest.raises(EngineFailure, match="model not found"):
        breaker.check(RuntimeError("server 404: model not found"))


def test_breaker_ignores_too_long_and_is_disarmed_by_a_success():
    breaker = Breaker()
    for _ in range(3 * FAILURES_BEFORE_ANY_SUCCESS):
        breaker.check(ValueError("The decoder prompt (length 9000) is longer than the maximum model length"))
    breaker.check(Answer(["a caption"], 10, 3, ["stop"]))
    for _ in range(3 * FAILURES_BEFORE_ANY_SUCCESS):
        breaker.check(RuntimeError("server 400: bad request"))


# ------------------------------------------------------------------------------------ the shard lock
@pytest.mark.parametrize(
    "argv, looks",
    [
        (["snakemake", "-n"], True),
        (["snakemake", "--cores", "2", "--dry-run"], True),
        (["snakemake", "-np"], True),
        (["snakemake", "--lint", "--quiet"], True),
        (["snakemake", "--report", "r.html"], True),
        (["snakemake", "--unlock"], True),
        (["snakemake", "--cores", "2", "--resources", "gpu=1"], False),
        (["snakemake", "-c2", "--forcerun", "results/frames/0001.json"], False),
    ],
)
def test_commands_that_only_look(argv, looks):
    assert only_looks(argv) is looks


def _hold(folder: str, ready, done) -> None:
    claim(folder)
    ready.set()
    done.wait(30)


def test_one_process_holds_the_shards_at_a_time(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    other.start()
    try:
        assert ready.wait(30)
        assert claim(tmp_path, wait=0.3) is None
        assert holder(tmp_path) == f"process {other.pid}"
    finally:
        done.set()
        other.join()
    fd = claim(tmp_path, wait=5)  # released when its holder ended
    assert fd is not None
    os.close(fd)


def test_the_lock_file_is_not_followed_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / ".lock").symlink_to(victim)
    with pytest.raises(OSError):
        claim(shards)
    assert victim.read_text() == "precious"
