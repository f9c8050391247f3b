"""Long videos end to end: real snakemake, ffmpeg and vLLM (CPU build, tiny random Qwen2-VL: the
captions and summaries are gibberish, the tests check structure, statuses and which jobs run)."""

import json
import shutil

import pytest
from helpers import (
    CAPTIONED,
    cut_tail,
    jobs_run,
    make_shots_video,
    make_video,
    planned_jobs,
    run_snakemake,
    tiny_config,
    write_records,
)

pytestmark = pytest.mark.slow

CUTS = (50, 110)


def long_config(model, **long_video):
    # 0.5 fps, 30-frame windows: 60 s windows; eight frames per window at most, short summaries
    return tiny_config(
        model,
        shards=1,
        frames={"fps": 0.5, "max_frames": 8},
        long_video={"window_frames": 30, "min_window_frames": 15, "summary_max_tokens": 8, **long_video},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """A video of three shots, the same cut at 100 s (a truncated download) and a short clip, built once."""
    work = tmp_path_factory.mktemp("long")
    shots = make_shots_video(work / "shots.mp4", cuts=CUTS, seconds=180)
    cut_tail(shots, work / "cut.mp4", 100)
    make_video(work / "short.mp4", seconds=1)
    records = [{"video": [name], "id": i} for i, name in enumerate(["shots.mp4", "cut.mp4", "short.mp4"])]
    write_records(work / "records.json", records)
    config = long_config(tiny_model)
    proc = run_snakemake(work, config)
    return work, config, proc


def output(work):
    return json.loads((work / "captions.json").read_text(encoding="utf-8"))


def test_long_videos_are_captioned_per_window_and_summarised(built):
    work, _, proc = built
    assert jobs_run(proc.stdout + proc.stderr)["summarize_shard"] == 1
    shots, cut, short = output(work)
    meta = shots["caption_meta"]
    spans = [(w["start"], w["end"]) for w in meta["windows"]]
    assert spans[0][0] == 0 and spans[-1][1] == 180 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert [s for s, _ in spans[1:]] == [50, 110]  # edges on the cuts
    assert all(w["status"] in CAPTIONED and w["output_tokens"] > 0 for w in meta["windows"])
    assert all(w["attempts"] == 1 for w in meta["windows"]) and meta["attempts"] == len(meta["windows"])
    assert isinstance(shots["caption"], str) and meta["status"] in ("ok", "truncated")
    assert meta["summary"]["output_tokens"] > 0 and meta["summary"]["prompt_tokens"] > 0
    # the truncated tail: its window fails, the others and the summary are captioned
    windows = cut["caption_meta"]["windows"]
    assert [w["status"] == "error" for w in windows] == [False, False, True]
    assert "no decodable frames" in windows[2]["error"]
    assert cut["caption_meta"]["status"] in ("ok", "truncated") and isinstance(cut["caption"], str)
    assert "windows" not in short["caption_meta"] and "summary" not in short["caption_meta"]
    # the report's gallery shows a timeline per long video: a thumbnail strip and a caption per window
    gallery = (work / "results" / "report" / "gallery.html").read_text(encoding="utf-8")
    assert gallery.count('<ol class="timeline">') == 2
    assert gallery.count('<img class="window"') == 5  # 3 + 2: the truncated tail has no frames to show
    assert "0.0-50.0 s" in gallery and "no decodable frames from 120.0 s" in gallery


def test_editing_the_summary_prompt_reruns_only_summaries_and_the_merge(built, tmp_path):
    work, config, _ = built
    copy = tmp_path / "wf"
    shutil.copytree(work, copy, symlinks=True)
    assert planned_jobs(copy, config) == {}
    edited = {**config, "long_video": {**config["long_video"], "summary_prompt": "Sum up these clips."}}
    proc = run_snakemake(copy, edited)
    assert jobs_run(proc.stdout + proc.stderr) == {
        "summarize_shard": 1,
        "merge_captions": 1,
        "build_report": 1,
        "all": 1,
    }
    before, after = output(work), output(copy)
    assert [r["caption_meta"]["windows"] for r in before[:2]] == [
        r["caption_meta"]["windows"] for r in after[:2]
    ]
    assert before[2] == after[2]


def test_short_clips_under_auto_give_the_same_bytes_as_single_prompts(tiny_model, tmp_path):
    for i in range(2):
        make_video(tmp_path / f"c{i}.mp4", seconds=1 + i, source=["testsrc2", "smptebars"][i])
    write_records(tmp_path / "records.json", [{"video": [f"c{i}.mp4"], "id": i} for i in range(2)])
    proc = run_snakemake(tmp_path, long_config(tiny_model, mode="single"))
    assert "summarize_shard" not in jobs_run(proc.stdout + proc.stderr)  # nothing to summarise: today's jobs
    single = (tmp_path / "captions.json").read_bytes()
    proc = run_snakemake(tmp_path, long_config(tiny_model, mode="auto"))
    assert jobs_run(proc.stdout + proc.stderr)["extract_frames"] == 1  # rerun: long_video.mode changed
    assert (tmp_path / "captions.json").read_bytes() == single
