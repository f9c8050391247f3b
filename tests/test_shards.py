import json
import os

from vidcap.records import DEFAULT_KEYS
from vidcap.shards import shard_file, shard_ids, shard_of, sync_shards

KEYS = dict(DEFAULT_KEYS)


def write(path, recs):
    path.write_text(json.dumps(recs), encoding="utf-8")


def snapshot(shard_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(shard_dir.glob("*.jsonl"))}


def make(n):
    return [{"video": [f"clips/{i}.mp4"], "conversation": [{"from": "human", "value": ""}], "i": i, "pad": "x" * 1000}
            for i in range(n)]


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
