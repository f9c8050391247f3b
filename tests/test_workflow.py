"""End-to-end: real snakemake, real ffmpeg, real vLLM (CPU build) on the tiny random model."""

import json
import shutil

import pytest
from helpers import (
    CAPTIONED,
    ONE_SHARD_JOBS,
    jobs_run,
    make_video,
    planned_jobs,
    run_snakemake,
    tiny_config,
    write_records,
)

pytestmark = pytest.mark.slow

SOURCES = [
    "testsrc2",
    "mandelbrot",
    "smptebars",
    "rgbtestsrc",
    "testsrc",
    "yuvtestsrc",
    "pal75bars",
    "cellauto",
]


@pytest.fixture(scope="module")
def built40(tmp_path_factory, tiny_model):
    """40 records in 8 shards (one with a missing video), built once; tests below start from a copy."""
    work = tmp_path_factory.mktemp("wf40")
    records = []
    for i in range(40):
        name = f"clips/clip {i:02d}.mp4"
        if i != 17:
            make_video(work / name, seconds=0.5 + (i % 3) * 0.5, source=SOURCES[i % len(SOURCES)])
        records.append({"video": [name], "conversation": [{"from": "human", "value": ""}], "id": i})
    write_records(work / "records.json", records)
    config = tiny_config(tiny_model, shards=8)
    proc = run_snakemake(work, config)
    return work, config, records, proc


def test_full_build_captions_every_record_in_order(built40):
    work, _, records, proc = built40
    out = json.loads((work / "captions.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in out] == list(range(40))
    assert jobs_run(proc.stdout + proc.stderr)["caption_shard"] == 8
    for rec in out:
        assert rec["conversation"][0]["value"] == "Please describe the video in detail."
        meta = rec["caption_meta"]
        if rec["id"] == 17:
            assert meta["status"] == "error" and "missing file" in meta["error"]
            assert rec["caption"] is None
        else:
            assert meta["status"] in CAPTIONED, meta
            assert isinstance(rec["caption"], str) and meta["output_tokens"] > 0
            assert meta["frames"] >= 4 and meta["prompt_tokens"] > meta["frames"]
            assert meta["attempts"] == 1  # quality.retries is 0 by default: degenerate ones are labelled only


def test_nothing_to_do_after_a_build(built40):
    work, config, _, _ = built40
    assert planned_jobs(work, config) == {}


def test_editing_one_record_reruns_one_shard(built40, tmp_path):
    work, config, records, _ = built40
    copy = tmp_path / "wf"
    shutil.copytree(work, copy, symlinks=True)
    edited = [dict(r) for r in records]
    edited[5]["conversation"] = [{"from": "human", "value": "edited"}]
    edited[5]["tag"] = "changed"
    write_records(copy / "records.json", edited)
    one_shard = ONE_SHARD_JOBS
    assert planned_jobs(copy, config) == one_shard
    proc = run_snakemake(copy, config)
    assert jobs_run(proc.stdout + proc.stderr) == one_shard
    out = json.loads((copy / "captions.json").read_text(encoding="utf-8"))
    assert out[5]["tag"] == "changed" and len(out) == 40
    assert planned_jobs(copy, config) == {}


def test_malformed_input_fails_before_any_job(tiny_model, tmp_path):
    (tmp_path / "records.json").write_text('[{"video": ["a.mp4"]}, {"video": 3}]', encoding="utf-8")
    proc = run_snakemake(tmp_path, tiny_config(tiny_model), check=False)
    assert proc.returncode != 0
    assert "record 1" in proc.stderr and "'video'" in proc.stderr
    assert jobs_run(proc.stdout + proc.stderr) == {}
    assert not (tmp_path / "results" / "frames").exists()


@pytest.mark.parametrize(
    "override, named, nearest",
    [
        ({"frames": {"fsp": 3}}, "frames.fsp", "frames.fps"),
        ({"shard": 3}, "shard", "shards"),
        ({"engine": {"max_num_seq": 8}}, "engine.max_num_seq", "engine.max_num_seqs"),
    ],
)
def test_misspelt_config_key_fails_before_any_job(tiny_model, tmp_path, override, named, nearest):
    write_records(tmp_path / "records.json", [{"video": ["a.mp4"]}])
    proc = run_snakemake(tmp_path, tiny_config(tiny_model, **override), check=False)
    assert proc.returncode != 0
    assert f"unknown config key '{named}'" in proc.stderr and f"did you mean '{nearest}'" in proc.stderr
    assert jobs_run(proc.stdout + proc.stderr) == {}


def test_unreachable_server_fails_the_build_and_writes_no_result(tiny_model, tmp_path):
    """engine.backend server at a closed port: snakemake fails (after the profile's retry), no output file,
    no shard result: a later run captions the records instead of keeping 'server unreachable' errors."""
    make_video(tmp_path / "a.mp4", seconds=1)
    write_records(tmp_path / "records.json", [{"video": ["a.mp4"]}, {"video": ["a.mp4"], "id": 2}])
    config = tiny_config(
        tiny_model, shards=1, engine={"backend": "server", "url": "http://127.0.0.1:9", "retries": 0}
    )
    proc = run_snakemake(tmp_path, config, check=False)
    assert proc.returncode != 0
    assert "server unreachable" in proc.stdout + proc.stderr
    assert not (tmp_path / "captions.json").exists()
    assert not list((tmp_path / "results" / "captions").glob("*.jsonl"))


def test_unknown_vllm_arg_fails_before_any_job(tiny_model, tmp_path):
    write_records(tmp_path / "records.json", [{"video": ["a.mp4"]}])
    config = tiny_config(tiny_model, engine={"vllm_args": {"quantisation": "fp8"}})
    proc = run_snakemake(tmp_path, config, check=False)
    assert proc.returncode != 0
    assert "engine.vllm_args: 'quantisation' is not an argument" in proc.stderr
    assert "did you mean 'quantization'" in proc.stderr
    assert jobs_run(proc.stdout + proc.stderr) == {}


def test_caption_jobs_inside_an_allocation_hold_different_gpus(tiny_model, tmp_path, monkeypatch):
    """`salloc --gpus=2` then `snakemake --resources gpu=2` (local executor inside the allocation): each of
    the two caption jobs locks its own device of the job's two (CPU build: the ids are only recorded)."""
    monkeypatch.setenv("SLURM_JOB_ID", f"vidcap-test-{tmp_path.name}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    records = []
    for i in range(4):
        make_video(tmp_path / f"v{i}.mp4", seconds=1, source=SOURCES[i])
        records.append({"video": [f"v{i}.mp4"], "id": i})
    write_records(tmp_path / "records.json", records)
    # one core per job, so both caption jobs run at once on the 2 cores (their engines overlap for ~30 s)
    config = tiny_config(tiny_model, shards=2, frames={"threads": 1}, engine={"threads": 1})
    run_snakemake(tmp_path, config, gpus=2)
    devices = [
        json.loads(p.read_text())["devices"]
        for p in sorted((tmp_path / "results" / "captions").glob("*.stats.json"))
    ]
    assert sorted(d for held in devices for d in held) == ["0", "1"], devices
