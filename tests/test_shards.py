import json
import os
import re

import pytest
from helpers import ONE_SHARD_JOBS, jobs_run, planned_jobs, run_snakemake, tiny_config, write_records

from vidcap.records import DEFAULT_KEYS
from vidcap.shards import shard_file, shard_ids, shard_of, sync_shards

KEYS = dict(DEFAULT_KEYS)


def write(path, recs):
    path.write_text(json.dumps(recs), encoding="utf-8")


def snapshot(shard_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(shard_dir.glob("*.jsonl"))}


def make(n):
    return [
        {
            "video": [f"clips/{i}.mp4"],
            "conversation": [{"from": "human", "value": ""}],
            "i": i,
            "pad": "x" * 1000,
        }
        for i in range(n)
    ]


def changed(before, after):
    return sorted(k for k in after if before.get(k) != after[k])


def test_shard_of_is_deterministic_and_uses_media_only():
    rec = {"video": ["a.mp4"], "other": 1}
    assert shard_of(rec, KEYS, 8) == shard_of({"video": "a.mp4", "other": 2}, KEYS, 8)
    counts = [0] * 8
    for i in range(800):
        counts[shard_of({"video": [f"v{i}.mp4"]}, KEYS, 8)] += 1
    assert min(counts) > 60  # spread evenly
    assert shard_ids(3) == ["0000", "0001", "0002"] and shard_ids(12345)[-1] == "12344"


def test_edit_add_remove_touch_one_shard_each(tmp_path):
    src, shard_dir = tmp_path / "r.json", tmp_path / "shards"
    recs = make(4000)  # ~1.5 MB per shard: beyond Snakemake's 1 MB checksum shortcut
    write(src, recs)
    summary = sync_shards(src, shard_dir, 4, KEYS, log=None)
    assert summary["records"] == 4000 and len(summary["changed"]) == 4
    assert os.path.getsize(shard_file(shard_dir, "0000")) > 1_000_000
    base = snapshot(shard_dir)

    assert sync_shards(src, shard_dir, 4, KEYS, log=None)["changed"] == []
    assert snapshot(shard_dir) == base  # nothing rewritten, mtimes kept

    recs[123]["conversation"][0]["value"] = "edited"
    write(src, recs)
    sync_shards(src, shard_dir, 4, KEYS, log=None)
    after_edit = snapshot(shard_dir)
    assert changed(base, after_edit) == [f"{shard_of(recs[123], KEYS, 4):04d}.jsonl"]

    recs.insert(0, {"video": "new.mp4"})
    write(src, recs)
    sync_shards(src, shard_dir, 4, KEYS, log=None)
    after_add = snapshot(shard_dir)
    assert changed(after_edit, after_add) == [f"{shard_of(recs[0], KEYS, 4):04d}.jsonl"]

    gone = recs.pop(2000)
    write(src, recs)
    sync_shards(src, shard_dir, 4, KEYS, log=None)
    assert changed(after_add, snapshot(shard_dir)) == [f"{shard_of(gone, KEYS, 4):04d}.jsonl"]

    lines = sum(len(shard_file(shard_dir, s).read_text().splitlines()) for s in shard_ids(4))
    assert lines == len(recs)


def test_a_tampered_shard_is_rewritten(tmp_path):
    src, shard_dir = tmp_path / "r.jsonl", tmp_path / "shards"
    src.write_text("".join(json.dumps(r) + "\n" for r in make(20)))
    sync_shards(src, shard_dir, 2, KEYS, log=None)
    good = shard_file(shard_dir, "0001").read_bytes()
    shard_file(shard_dir, "0001").write_text("garbage\n")
    assert sync_shards(src, shard_dir, 2, KEYS, log=None)["changed"] == ["0001"]
    assert shard_file(shard_dir, "0001").read_bytes() == good


def test_fewer_shards_removes_stale_files(tmp_path):
    src, shard_dir = tmp_path / "r.json", tmp_path / "shards"
    write(src, make(30))
    sync_shards(src, shard_dir, 5, KEYS, log=None)
    sync_shards(src, shard_dir, 3, KEYS, log=None)
    assert sorted(p.stem for p in shard_dir.glob("*.jsonl")) == ["0000", "0001", "0002"]


def media_records(root, n=12, missing=(10, 11)):
    """Records whose videos exist under ``root`` except those at ``missing``."""
    recs = []
    for i in range(n):
        name = f"clips/c{i:02d}.mp4"
        if i not in missing:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"video %d" % i)
        recs.append({"video": [name], "conversation": [{"from": "human", "value": ""}], "i": i})
    return recs


def replace_in_place(path, content):
    """New content, same path; the mtime moves on even if the clock has not ticked since the last write."""
    before = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_media_changes_touch_one_shard_each(tmp_path):
    src, shard_dir = tmp_path / "r.json", tmp_path / "shards"
    recs = media_records(tmp_path)
    write(src, recs)
    sync_shards(src, shard_dir, 4, KEYS, log=None)
    base = snapshot(shard_dir)
    assert sync_shards(src, shard_dir, 4, KEYS, log=None)["changed"] == []
    assert snapshot(shard_dir) == base

    def shard_name(i):
        return f"{shard_of(recs[i], KEYS, 4):04d}.jsonl"

    steps = [
        (3, lambda p: replace_in_place(p, b"video 3")),  # same size, new content
        (10, lambda p: p.write_bytes(b"was missing")),
        (5, lambda p: p.unlink()),
    ]
    for i, act in steps:
        act(tmp_path / recs[i]["video"][0])
        before = snapshot(shard_dir)
        summary = sync_shards(src, shard_dir, 4, KEYS, log=None)
        assert summary["changed"] == [shard_name(i)[:4]]
        assert changed(before, snapshot(shard_dir)) == [shard_name(i)]
        assert sync_shards(src, shard_dir, 4, KEYS, log=None)["changed"] == []


def test_shard_lines_stamp_media_and_keep_the_record_digest(tmp_path):
    from vidcap.atomic import iter_jsonl
    from vidcap.records import MEDIA_STAMP, record_digest

    src, shard_dir = tmp_path / "data" / "r.jsonl", tmp_path / "shards"
    recs = media_records(tmp_path / "media", n=6, missing=(4,))
    recs.append({"image": ["/nowhere/x.png", "clips/c00.mp4"], "i": 6})
    recs.append({"video": [], "i": 7})  # no media: no stamp
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    sync_shards(src, shard_dir, 2, KEYS, media_root=tmp_path / "media", log=None)
    lines = [rec for sid in shard_ids(2) for rec in iter_jsonl(shard_file(shard_dir, sid))]  # as frames reads
    by_i = {rec["i"]: rec for rec in lines}
    assert sorted(by_i) == list(range(8))
    for rec in recs:
        line = by_i[rec["i"]]
        assert record_digest(line) == record_digest(rec)  # merge joins shard results to input records by this
        assert {k: v for k, v in line.items() if k != MEDIA_STAMP} == rec
    st = (tmp_path / "media" / "clips" / "c01.mp4").stat()
    assert by_i[1][MEDIA_STAMP] == [[st.st_size, st.st_mtime_ns]]
    assert by_i[4][MEDIA_STAMP] == [None]
    assert by_i[6][MEDIA_STAMP] == [None, by_i[0][MEDIA_STAMP][0]]
    assert MEDIA_STAMP not in by_i[7]


def test_many_shards_are_written_in_several_passes(tmp_path, monkeypatch):
    from vidcap import shards

    src = tmp_path / "r.json"
    write(src, make(200))
    sync_shards(src, tmp_path / "one", 10, KEYS, log=None)
    monkeypatch.setattr(shards, "MAX_OPEN_SHARDS", 3)
    assert len(sync_shards(src, tmp_path / "four", 10, KEYS, log=None)["changed"]) == 10
    one, four = snapshot(tmp_path / "one"), snapshot(tmp_path / "four")
    assert {k: v[1] for k, v in one.items()} == {k: v[1] for k, v in four.items()}


def test_a_malformed_input_replaces_no_shard(tmp_path):
    from vidcap.records import InputError

    src, shard_dir = tmp_path / "r.jsonl", tmp_path / "shards"
    recs = make(50)
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    sync_shards(src, shard_dir, 4, KEYS, log=None)
    base = sorted(p.name for p in shard_dir.iterdir()), snapshot(shard_dir)
    recs[0]["pad"] = "changed"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"video": 3}\n')
    with pytest.raises(InputError, match="record 50: key 'video'"):
        sync_shards(src, shard_dir, 4, KEYS, log=None)
    assert (sorted(p.name for p in shard_dir.iterdir()), snapshot(shard_dir)) == base  # no temp file left


def _pretend_built(work, config):
    """Every output present and recorded as up to date, without running a job (no engine needed)."""
    listing = run_snakemake(work, config, "--summary").stdout.splitlines()
    for row in listing[1:]:
        path = work / row.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    run_snakemake(work, config, "--touch")


@pytest.mark.slow
def test_workflow_reruns_one_shard_per_changed_media_file(tmp_path):
    """Real Snakemake, dry runs: replacing, adding or deleting one video plans exactly one shard's jobs."""
    recs = media_records(tmp_path, n=16, missing=(12, 13))
    write_records(tmp_path / "records.json", recs)
    config = tiny_config("none", shards=4)
    _pretend_built(tmp_path, config)
    assert planned_jobs(tmp_path, config) == {}
    one_shard = ONE_SHARD_JOBS
    steps = [
        (2, lambda p: replace_in_place(p, b"video 2")),
        (12, lambda p: p.write_bytes(b"now here")),
        (7, lambda p: p.unlink()),
    ]
    for i, act in steps:
        act(tmp_path / recs[i]["video"][0])
        proc = run_snakemake(tmp_path, config, "--dry-run")
        assert jobs_run(proc.stdout + proc.stderr) == one_shard, i
        assert set(re.findall(r"shard=(\d+)", proc.stdout)) == {f"{shard_of(recs[i], KEYS, 4):04d}"}
        run_snakemake(tmp_path, config, "--touch")
        assert planned_jobs(tmp_path, config) == {}


@pytest.mark.parametrize("content", ["[]", "\n"])
def test_an_empty_input_stops_with_one_message_and_writes_no_shards(tmp_path, content):
    from vidcap.records import InputError

    src = tmp_path / ("r.json" if content == "[]" else "r.jsonl")
    src.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="no records .*nothing to caption"):
        sync_shards(src, tmp_path / "shards", 4, KEYS, log=None)
    assert not list((tmp_path / "shards").glob("*.jsonl"))


@pytest.mark.slow
def test_workflow_on_an_empty_input_plans_no_jobs(tmp_path):
    """Real Snakemake, a dry run: one message naming the input, no job planned."""
    write_records(tmp_path / "records.json", [])
    proc = run_snakemake(tmp_path, tiny_config("none"), "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and jobs_run(out) == {}
    assert "invalid input: " in out and "records.json: no records" in out
    assert out.count("no records") == 1, out
