"""Long videos end to end: real snakemake, ffmpeg and vLLM (CPU build, tiny random Qwen2-VL: the
captions and summaries are gibberish, the tests check structure, statuses and which jobs run)."""

import json
import re
import shutil

import pytest
from helpers import (
    CAPTIONED,
    caption_stats,
    cut_tail,
    jobs_run,
    make_shots_video,
    make_video,
    planned_jobs,
    requests_sent,
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


# --------------------------------------------- windowed records answer as short ones; derived entries
QUESTION = "What colours are there?"
SHORT = {"prompt": "Rewrite it as one sentence.", "from": "caption", "max_tokens": 8}


def answers_config(model, url, **over):
    """Per-record prompts, JSON answers, two candidates kept, and a derived entry, on the session's
    ``vllm serve`` (no engine start per job)."""
    from helpers import SERVER_KEY_ENV

    return tiny_config(
        model,
        shards=1,
        keys={"prompt": "question"},
        frames={"fps": 0.5, "max_frames": 8},
        sampling={"max_tokens": 48, "temperature": 0.7, "seed": 0},
        candidates={"n": 2, "keep": "all"},
        output_format="json",
        long_video={"window_frames": 30, "min_window_frames": 15, "summary_max_tokens": 48},
        engine={"backend": "server", "url": url, "api_key_env": SERVER_KEY_ENV},
        caption_set={"short": SHORT},
        **over,
    )


@pytest.fixture(scope="module")
def answered(tmp_path_factory, tiny_model, tiny_server):
    """6 records: two long videos (one asked its own question) among four short clips (one with a question)."""
    work = tmp_path_factory.mktemp("answers")
    make_shots_video(work / "shots.mp4", cuts=CUTS, seconds=180)
    for i, source in enumerate(["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc"]):
        make_video(work / f"c{i}.mp4", seconds=1 + i % 2, source=source)
    records = [{"video": [f"c{i}.mp4"], "id": i} for i in range(4)]
    records[1]["question"] = QUESTION
    records[2:2] = [
        {"video": ["shots.mp4"], "id": 10},
        {"video": ["shots.mp4"], "id": 11, "question": QUESTION},
    ]
    write_records(work / "records.json", records)
    config = answers_config(tiny_model, tiny_server)
    run_snakemake(work, config)
    return work, config


def derived_asked(work) -> int:
    """Derived requests the summary jobs of the last build sent (each job's last count line)."""
    total = 0
    for log in (work / "results" / "logs" / "summarize_shard").glob("*[0-9].log"):
        found = re.findall(r"derived entries: (\d+) asked", log.read_text(encoding="utf-8"))
        total += int(found[-1]) if found else 0
    return total


def test_windowed_records_have_the_fields_of_short_records_and_every_derived_entry(answered):
    work, _ = answered
    out = output(work)
    long = [r for r in out if "windows" in r["caption_meta"]]
    assert [r["id"] for r in long] == [10, 11] and all(len(r["caption_meta"]["windows"]) == 3 for r in long)
    fields = {tuple(k for k in r if k != "question") for r in out}
    assert len(fields) == 1, fields  # one schema for every record, windowed or not
    for r in out:
        assert {"captions", "caption_json", "caption_set"} <= r.keys()
        assert r["caption_meta"]["status"] in CAPTIONED
        assert len(r["captions"]) == 2 and r["caption"] in r["captions"]
        assert list(r["caption_set"]) == ["short"] and isinstance(r["caption_set"]["short"], str)
        assert r["caption_meta"]["set"]["short"]["status"] in CAPTIONED
    for r in long:  # the summary answered with the schema and two candidates
        summary = r["caption_meta"]["summary"]
        assert summary["status"] in CAPTIONED and summary["output_tokens"] > 0
        assert "json" not in summary and "captions" not in summary
        assert r["caption_json"] is None or r["caption_json"]["summary"] == r["caption"]
        assert all(
            w.get("caption_json") is None or "summary" in w["caption_json"]
            for w in r["caption_meta"]["windows"]
        )


def test_the_summary_asks_the_records_own_question(answered, tmp_path):
    """The same windows summarised with and without the record's question: the question is in the prompt."""
    from vidcap import config as vconfig
    from vidcap.settings import summary_job
    from vidcap.summary import summarize_shard

    work, config = answered
    captions = next(
        p for p in (work / "results" / "captions").glob("*.jsonl") if '"windows"' in p.read_text()
    )
    shard = work / "results" / "shards" / captions.name
    job = summary_job(vconfig.load(overrides={**config, "caption_set": {}}))
    job["store"] = str(tmp_path / "store")
    asked = summarize_shard(str(captions), str(tmp_path / "with.jsonl"), job, shard_path=str(shard))
    job["store"] = str(tmp_path / "store2")
    summarize_shard(
        str(captions),
        str(tmp_path / "without.jsonl"),
        {**job, "keys": {"prompt": None}},
        shard_path=str(shard),
    )
    assert asked["summarized"] == 2
    with_q, without_q = (
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("with.jsonl", "without.jsonl")
    )
    tokens = [
        [r["caption_meta"]["summary"]["prompt_tokens"] for r in rs if "summary" in r["caption_meta"]]
        for rs in (with_q, without_q)
    ]
    assert tokens[0][0] == tokens[1][0] and tokens[0][1] > tokens[1][1] + 5  # only the asked record grew


def test_a_rebuild_is_byte_identical_and_a_derived_edit_runs_only_the_derived_step(answered):
    """In place (media paths are in the frame-cache keys): the module's last test of this build."""
    work, config = answered
    before = (work / "captions.json").read_bytes()
    stats = caption_stats(work / "results")
    run_snakemake(work, config, "--forceall")
    assert (work / "captions.json").read_bytes() == before
    assert requests_sent(work / "results", stats) == 0 and derived_asked(work) == 0
    edited = {
        **config,
        "caption_set": {"short": {**SHORT, "prompt": "Rewrite it as a text-to-video prompt."}},
    }
    stats = caption_stats(work / "results")
    proc = run_snakemake(work, edited)
    assert jobs_run(proc.stdout + proc.stderr) == {
        "summarize_shard": 1,
        "merge_captions": 1,
        "build_report": 1,
        "all": 1,
    }
    assert requests_sent(work / "results", stats) == 0 and derived_asked(work) == 6
    after = output(work)
    old = json.loads(before)
    assert [(r["caption"], r.get("caption_json")) for r in after] == [
        (r["caption"], r.get("caption_json")) for r in old
    ]
    assert all(r["caption_meta"]["set"]["short"]["status"] in CAPTIONED for r in after)
