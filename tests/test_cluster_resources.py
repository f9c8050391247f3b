"""Resources the cluster sees: a summary job asks for a GPU (and the GPU partition) only with work for it."""

import json
from types import SimpleNamespace

import pytest

from vidcap import settings as vsettings
from vidcap.config import load


def captions(tmp_path, *window_counts, status="ok"):
    path = tmp_path / "0000.jsonl"
    lines = []
    for i, count in enumerate(window_counts):
        meta = {"status": status}
        if count:
            meta["windows"] = [{"start": w * 128.0, "caption": "a window"} for w in range(count)]
        lines.append(json.dumps({"id": i, "caption": "x", "caption_meta": meta}))
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "windows,status,gpus", [((0, 0), "ok", 0), ((0, 1), "ok", 0), ((0, 2), "ok", 1), ((3,), "error", 0)]
)
def test_summary_gpus_follow_the_captions(tmp_path, windows, status, gpus):
    config = load(overrides={"input": "x.jsonl", "model": "m"})
    path = captions(tmp_path, *windows, status=status)
    job_input = SimpleNamespace(captions=str(path))
    assert vsettings.summary_gpus(config)(None, job_input) == gpus
    partition = vsettings.summary_partition(job_input, "gpu-site", "cpu-site")
    assert partition == ("gpu-site" if gpus else "cpu-site")


def test_summary_with_a_server_backend_needs_no_gpu(tmp_path):
    config = load(overrides={"input": "x.jsonl", "model": "m", "engine": {"backend": "server"}})
    job_input = SimpleNamespace(captions=str(captions(tmp_path, 2)))
    assert vsettings.summary_gpus(config)(None, job_input) == 0


def test_derived_entries_take_the_gpu_partition_without_long_videos(tmp_path):
    entries = {"t2v": {"prompt": "One sentence.", "from": "caption"}}
    config = load(overrides={"input": "x.jsonl", "model": "m", "caption_set": entries})
    extra = vsettings.derived_entries_input(config, "shards/0000.jsonl")
    job_input = SimpleNamespace(captions=str(captions(tmp_path, 0, 0)), **extra)
    assert vsettings.summary_gpus(config)(None, job_input) == 1
    assert vsettings.summary_partition(job_input, "gpu-site", "cpu-site") == "gpu-site"
    plain = load(overrides={"input": "x.jsonl", "model": "m"})
    assert vsettings.derived_entries_input(plain, "shards/0000.jsonl") == {}
