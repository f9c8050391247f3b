import json

import pytest

from vidcap.records import (
    DEFAULT_KEYS,
    InputError,
    RecordWriter,
    iter_records,
    media_list,
    record_digest,
    record_prompt,
    with_prompt,
)

KEYS = dict(DEFAULT_KEYS)


def records_of(path):
    return [r for _, r in iter_records(path, KEYS)]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_reads_both_formats_in_order(tmp_path, suffix):
    recs = [
        {"video": [f"v{i}.mp4"], "conversation": [{"from": "human", "value": ""}], "i": i} for i in range(50)
    ]
    path = tmp_path / f"r{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(recs, indent=3), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", encoding="utf-8")
    assert records_of(path) == recs


def test_json_array_is_streamed_across_chunk_boundaries(tmp_path):
    from vidcap import records

    recs = [{"video": "ü" * (i % 7) + f"{i}.mp4", "pad": "x" * (i * 13 % 300)} for i in range(300)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    got = [r for _, r in records._iter_json_array(path, chunk_size=7)]
    assert got == recs


def test_scalar_video_string_is_a_one_item_list(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"video": "a.mp4"}]', encoding="utf-8")
    (rec,) = records_of(path)
    assert media_list(rec, "video") == ["a.mp4"]


def test_empty_array_and_empty_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(" [ ] ", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n", encoding="utf-8")
    assert records_of(tmp_path / "a.json") == [] and records_of(tmp_path / "b.jsonl") == []


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bad.json", '[{"video": ["a.mp4"]}, {"video": ["b.mp4"], }]', ["record 1", "invalid JSON"]),
        ("trunc.json", '[{"video": ["a.mp4"]}, {"video": ["b.m', ["record 1", "invalid JSON"]),
        ("trunc2.json", '[{"video": ["a.mp4"]}', ["record 1", "truncated"]),
        ("notarray.json", '{"video": ["a.mp4"]}', ["expected a JSON array", ".jsonl"]),
        ("trail.json", '[{"video": "a.mp4"}] x', ["after the closing"]),
        ("scalar.json", '[{"video": "a.mp4"}, 5]', ["record 1", "expected a JSON object, got number"]),
        (
            "vtype.json",
            '[{"video": 3}]',
            ["record 0", "key 'video'", "string or a list of strings, got number"],
        ),
        ("vlist.json", '[{"video": ["a.mp4", 2]}]', ["record 0", "key 'video'"]),
        ("itype.json", '[{"video": "a.mp4", "image": {"x": 1}}]', ["record 0", "key 'image'", "got object"]),
        ("conv.json", '[{"video": "a.mp4", "conversation": "hi"}]', ["record 0", "key 'conversation'"]),
        ("nokey.json", '[{"video": "a.mp4"}, {"clip": "b.mp4"}]', ["record 1", "missing key 'video'"]),
        ("bad.jsonl", '{"video": "a.mp4"}\n{"video": \n', ["record 1", "line 2", "invalid JSON"]),
        ("list.jsonl", '{"video": "a.mp4"}\n[1]\n', ["record 1", "expected a JSON object, got array"]),
    ],
)
def test_malformed_inputs_name_file_record_and_key(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as err:
        records_of(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("name", ["r.json", "r.jsonl"])
def test_non_utf8_bytes_are_reported(tmp_path, name):
    path = tmp_path / name
    body = b'{"video": "a.mp4"}\n{"video": "\xff\xfe.mp4"}\n'
    path.write_bytes(b"[" + body.replace(b"}\n{", b"},{") + b"]" if name.endswith(".json") else body)
    with pytest.raises(InputError, match="record 1.*UTF-8"):
        records_of(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        records_of(tmp_path / "nope.json")


def test_with_prompt_fills_first_human_turn_and_keeps_everything_else():
    rec = {
        "video": ["a.mp4"],
        "conversation": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}],
        "extra": {"k": [1, 2]},
    }
    out = with_prompt(rec, KEYS, "Describe.")
    assert out["conversation"] == [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "x"}]
    assert out["extra"] == rec["extra"] and rec["conversation"][0]["value"] == ""  # input untouched
    assert with_prompt({"video": "a"}, KEYS, "P")["conversation"] == [{"from": "human", "value": "P"}]


def test_record_prompt_override():
    keys = {**KEYS, "prompt": "question"}
    assert record_prompt({"question": "What colour?"}, keys, "default") == "What colour?"
    assert record_prompt({"question": "  "}, keys, "default") == "default"
    assert record_prompt({"question": "x"}, KEYS, "default") == "default"


def test_digest_ignores_key_order():
    assert record_digest({"a": 1, "b": [1, "é"]}) == record_digest({"b": [1, "é"], "a": 1})
    assert record_digest({"a": 1}) != record_digest({"a": 2})


@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_writer_formats(tmp_path, name):
    recs = [{"video": ["ä.mp4"], "caption": "视频"}, {"video": ["b.mp4"], "caption": None}]
    path = tmp_path / name
    with RecordWriter(path) as writer:
        for r in recs:
            writer.write(r)
    text = path.read_text(encoding="utf-8")
    assert "视频" in text  # non-ASCII kept
    if name.endswith(".jsonl"):
        assert [json.loads(line) for line in text.splitlines()] == recs
    else:
        assert json.loads(text) == recs and text.startswith("[\n  {\n    ")
    with RecordWriter(tmp_path / "empty.json"):
        pass
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from vidcap.atomic import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    (tmp_path / "plain").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


def test_json_arrays_are_parsed_by_the_c_backend():
    import ijson

    assert ijson.backend == "yajl2_c"  # the pure-Python backends are ~10x slower


def test_jsonl_keeps_huge_integers_exact_and_rejects_nan(tmp_path):
    big = 123456789012345678901234567890
    path = tmp_path / "r.jsonl"
    path.write_text(f'\ufeff{{"video": "a.mp4", "id": {big}, "x": 0.1}}\n', encoding="utf-8")
    (rec,) = records_of(path)
    assert rec["id"] == big and isinstance(rec["id"], int) and rec["x"] == 0.1
    for body in ['{"video": "a.mp4", "x": NaN}', f'{{"video": "a.mp4", "id": {big}, "x": Infinity}}']:
        path.write_text('{"video": "b.mp4"}\n' + body + "\n", encoding="utf-8")
        with pytest.raises(InputError, match=r"record 1 \(line 2\): invalid JSON"):
            records_of(path)


def test_json_array_integer_overflow_names_the_record(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"video": "a.mp4"}, {"video": "b.mp4", "id": 123456789012345678901234567890}]')
    with pytest.raises(InputError, match="record 1: invalid JSON: integer overflow.*write them as strings"):
        records_of(path)


def test_media_stamp_key_is_reserved(tmp_path):
    from vidcap.records import MEDIA_STAMP

    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"video": "a.mp4"}, {"video": "b.mp4", MEDIA_STAMP: []}]))
    with pytest.raises(InputError, match=f"record 1: key '{MEDIA_STAMP}' is reserved"):
        records_of(path)


# --- input shapes (issue 25): surrogates, other datasets' keys, .jsonl.gz and Parquet ----------------------

CUT_EMOJI_RECORD = '{"video": "b.mp4", "conversation": [{"from": "human", "value": "hi \\ud83d"}]}'


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_lone_surrogate_stops_both_formats_naming_record_and_key(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    if suffix == ".json":
        path.write_text(f'[{{"video": "a.mp4"}}, {CUT_EMOJI_RECORD}]', encoding="utf-8")
    else:
        path.write_text(f'{{"video": "a.mp4"}}\n{CUT_EMOJI_RECORD}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"record 1\b.*key 'conversation'\[0\]\['value'\]: a lone UTF-16"):
        records_of(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_escaped_surrogate_pairs_are_read_as_their_character(tmp_path, suffix):
    record = '{"video": "a.mp4", "t": "\\ud83d\\ude00 \\\\ud83d"}'  # an emoji, and a literal backslash-u
    path = tmp_path / f"r{suffix}"
    path.write_text(f"[{record}]" if suffix == ".json" else record + "\n", encoding="utf-8")
    assert records_of(path) == [{"video": "a.mp4", "t": "\U0001f600 \\ud83d"}]


def test_a_lone_surrogate_past_a_chunk_boundary_is_found(tmp_path):
    from vidcap import records

    good = [json.dumps({"video": f"{i}.mp4", "t": "\U0001f600" * (i % 5)}) for i in range(200)]
    path = tmp_path / "r.json"
    path.write_text("[" + ",".join([*good, CUT_EMOJI_RECORD]) + "]", encoding="utf-8")
    with pytest.raises(InputError, match="record 200: key"):
        list(records._iter_json_array(path, chunk_size=64))


@pytest.mark.parametrize(
    "record, hint",
    [
        ({"videos": ["a.mp4"]}, "set keys.video: videos in the config"),
        ({"images": ["a.png"]}, "set keys.image: images in the config"),
        ({"video": "a.mp4", "conversations": []}, "set keys.conversation: conversations"),
        ({"video": "a.mp4", "messages": []}, "set keys.conversation: messages"),
    ],
)
def test_other_datasets_keys_get_a_hint_naming_the_config_key(tmp_path, record, hint):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(InputError, match="record 0: ") as err:
        records_of(path)
    assert hint in str(err.value)


def test_configured_keys_read_other_datasets(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"videos": ["a.mp4"], "conversations": []}]), encoding="utf-8")
    keys = {**KEYS, "video": "videos", "conversation": "conversations"}
    assert [r for _, r in iter_records(path, keys)] == [{"videos": ["a.mp4"], "conversations": []}]


def test_jsonl_gz_input(tmp_path):
    import gzip

    recs = [{"video": f"{i}.mp4", "i": i} for i in range(5)]
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in recs)
    assert records_of(path) == recs
    (tmp_path / "plain.jsonl.gz").write_text('{"video": "a.mp4"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="unreadable gzip data"):
        records_of(tmp_path / "plain.jsonl.gz")


def test_parquet_input(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.Table.from_pylist(
        [
            {"video": ["a.mp4"], "image": None, "conversation": [{"from": "human", "value": "Say"}]},
            {"video": None, "image": ["b.png"], "conversation": None},
        ]
    )
    pq.write_table(table, tmp_path / "r.parquet")
    assert records_of(tmp_path / "r.parquet") == [
        {"video": ["a.mp4"], "conversation": [{"from": "human", "value": "Say"}]},
        {"image": ["b.png"]},
    ]
    (tmp_path / "bad.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable Parquet"):
        records_of(tmp_path / "bad.parquet")
