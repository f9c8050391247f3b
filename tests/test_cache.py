"""The frame cache: keyed by the real file and the frame settings."""

import json
import os

import pytest
from helpers import make_video, planned_jobs, run_snakemake, tiny_config, write_records

from vidcap.frames import cached_sample

PARAMS = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544}


def test_links_and_copies(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=1)
    os.symlink(video, tmp_path / "link.mp4")
    cache = tmp_path / "cache"
    first = cached_sample(str(video), "video", PARAMS, cache)
    linked = cached_sample(str(tmp_path / "link.mp4"), "video", PARAMS, cache)
    assert not first["cached"] and linked["cached"] and linked["frames"] == first["frames"]

    other = cached_sample(str(video), "video", {**PARAMS, "max_frames": 4}, cache)
    assert not other["cached"] and other["frames"] != first["frames"]  # new settings, new frames

    os.utime(video, ns=(0, 10**18))  # the file changed (mtime): extracted again
    assert not cached_sample(str(video), "video", PARAMS, cache)["cached"]


@pytest.mark.slow
def test_keep_false_removes_each_shards_frames_once_captioned(tmp_path, tiny_model):
    for i in range(3):
        make_video(tmp_path / f"c{i}.mp4", seconds=1)
    write_records(
        tmp_path / "records.json", [{"video": f"c{i}.mp4"} for i in range(3)] + [{"video": "gone.mp4"}]
    )
    config = tiny_config(tiny_model, shards=2, frames={"keep": False})
    proc = run_snakemake(tmp_path, config)
    out = json.loads((tmp_path / "captions.json").read_text())
    assert [r["caption_meta"]["status"] != "error" for r in out] == [True, True, True, False]
    frames = tmp_path / "results" / "frames"
    assert not list(frames.glob("*.frames")) and not (frames / "cache").exists()
    assert (
        "frame cache: 2 files" in (tmp_path / "results/logs/merge_captions.log").read_text()
    )  # the manifests
    assert "Removing temporary output" in proc.stdout + proc.stderr
    assert planned_jobs(tmp_path, config) == {}  # deleted frames do not make the build stale
    assert json.loads((tmp_path / "captions.json.provenance.json").read_text())["shards"] == 2
