import json

import pytest

from vidcap.atomic import dumps_line
from vidcap.merge import StaleResultError, merge_captions
from vidcap.records import DEFAULT_KEYS, record_digest
from vidcap.shards import shard_ids, shard_of, sync_shards

KEYS = dict(DEFAULT_KEYS)


def build(tmp_path, recs, n, tamper=None):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    per_shard = {sid: [] for sid in shard_ids(n)}
    for rec in recs:
        status = "error" if rec.get("bad") else "ok"
        per_shard[shard_ids(n)[shard_of(rec, KEYS, n)]].append(
            {
                "digest": record_digest(rec),
                "caption": None if status == "error" else f"cap {rec['i']}",
                "caption_meta": {"status": status, "error": "missing file" if status == "error" else None},
            }
        )
    if tamper:
        tamper(per_shard)
    files = []
    for sid, lines in per_shard.items():
        path = tmp_path / f"{sid}.jsonl"
        path.write_text("".join(dumps_line(x) for x in lines), encoding="utf-8")
        files.append(str(path))
    sync_shards(src, tmp_path / "shards", n, KEYS, log=None)  # the merge reads the records from the shards
    return str(tmp_path / "shards"), files


SETTINGS = {"shards": 3, "prompt": "Please describe the video in detail.", "keys": KEYS}


@pytest.mark.parametrize("out_name", ["out.json", "out.jsonl"])
def test_merge_restores_input_order_and_keeps_fields(tmp_path, out_name):
    recs = [
        {
            "video": [f"v{i % 7}.mp4"],
            "conversation": [{"from": "human", "value": ""}],
            "i": i,
            "bad": i == 4,
            "ünï": "ok",
        }
        for i in range(20)
    ]  # duplicated videos share a shard
    src, files = build(tmp_path, recs, 3)
    counts = merge_captions(str(src), files, str(tmp_path / out_name), SETTINGS, log=None)
    text = (tmp_path / out_name).read_text(encoding="utf-8")
    out = [json.loads(x) for x in text.splitlines()] if out_name.endswith("l") else json.loads(text)
    assert [r["i"] for r in out] == list(range(20))
    assert counts == {"ok": 19, "error": 1}
    for rec in out:
        assert rec["conversation"][0]["value"] == SETTINGS["prompt"] and rec["ünï"] == "ok"
        assert rec["caption"] == (None if rec["i"] == 4 else f"cap {rec['i']}")


def test_assistant_turn_style(tmp_path):
    recs = [{"video": ["a.mp4"], "conversation": [{"from": "human", "value": ""}], "i": 0}]
    src, files = build(tmp_path, recs, 3)
    merge_captions(
        str(src), files, str(tmp_path / "o.json"), {**SETTINGS, "output_style": "assistant_turn"}, log=None
    )
    (rec,) = json.loads((tmp_path / "o.json").read_text())
    assert rec["conversation"][-1] == {"from": "gpt", "value": "cap 0"}


def test_stale_results_are_refused(tmp_path):
    recs = [{"video": [f"v{i}.mp4"], "i": i} for i in range(6)]

    def drop_one(per_shard):
        next(lines for lines in per_shard.values() if lines).pop()

    src, files = build(tmp_path, recs, 3, tamper=drop_one)
    with pytest.raises(StaleResultError, match="fewer results"):
        merge_captions(str(src), files, str(tmp_path / "o.json"), SETTINGS, log=None)
    assert not (tmp_path / "o.json").exists()  # nothing half-written

    src, files = build(tmp_path, recs, 3)
    recs[0]["i"] = 99
    (tmp_path / "in.json").write_text(json.dumps(recs))
    sync_shards(tmp_path / "in.json", src, 3, KEYS, log=None)
    with pytest.raises(StaleResultError, match="record 0"):
        merge_captions(str(src), files, str(tmp_path / "o.json"), SETTINGS, log=None)


def test_candidates_and_json_answers_reach_the_output(tmp_path):
    recs = [{"video": ["v.mp4"], "conversation": [{"from": "human", "value": ""}], "i": i} for i in range(4)]

    def add_fields(per_shard):
        for lines in per_shard.values():
            for line in lines:
                line["captions"] = [line["caption"], "other"]
                line["caption_json"] = {"summary": line["caption"]}

    src, files = build(tmp_path, recs, 3, tamper=add_fields)
    merge_captions(str(src), files, str(tmp_path / "out.json"), SETTINGS, log=None)
    for rec in json.loads((tmp_path / "out.json").read_text()):
        assert rec["captions"] == [rec["caption"], "other"] and rec["caption_json"] == {
            "summary": rec["caption"]
        }
