"""``vidcap export``: each format loads in its real library (pyarrow, HF datasets), or is checked against its
trainer's documented schema where the trainer does not install cheaply from PyPI (cited per test)."""

from __future__ import annotations

import json

import pytest

from vidcap.__main__ import main
from vidcap.export import FORMATS, export, with_placeholders

pa = pytest.importorskip("pyarrow")  # the test extra installs datasets, which pulls pyarrow
datasets = pytest.importorskip("datasets")
import pyarrow.parquet as pq  # noqa: E402


def _meta(status="ok", **extra):
    meta = {
        "status": status,
        "error": "decode: moov atom not found" if status == "error" else None,
        "frames": 8,
        "halved": False,
        "prompt_tokens": 412,
        "output_tokens": 37,
        "finish_reason": "stop",
        "seed": 7,
        "attempts": 1,
    }
    return {**meta, **extra}


def _record(video, caption, meta, prompt="Describe the video.", **more):
    conversation = [{"from": "human", "value": prompt}]
    return {"video": video, "conversation": conversation, "caption": caption, "caption_meta": meta, **more}


def output_records() -> list[dict]:
    """Output-shaped records as the merge writes them: keys of caption_meta vary between records."""
    return [
        _record(["clips/a.mp4"], "A red ball rolls.", _meta()),
        _record(["clips/b.mp4"], "A cat naps.", _meta("truncated", finish_reason="length")),
        _record(["clips/c.mp4"], None, _meta("error", prompt_tokens=None, output_tokens=None)),
        # a long video: windows (nested) and a summary only here
        _record(
            "clips/long.mp4",
            "A long walk.",
            _meta(windows=[{"start": 0.0, "end": 30.0, "caption": "walk", "status": "ok"}], summary={"x": 1}),
        ),
        # an image record, and a prompt that already places its video
        {
            "image": ["stills/d.png"],
            "conversation": [{"from": "human", "value": "What is shown?"}],
            "caption": "A tree.",
            "caption_meta": _meta(chosen=1),
        },
        _record(["clips/e.mp4"], "A dog.", _meta(), prompt="<video>What happens?", source="web"),
        # two videos in one record: fine for LLaMA-Factory and ms-swift, not for LLaVA-Video
        _record(["clips/f1.mp4", "clips/f2.mp4"], "Two clips.", _meta(frames=4.5)),
    ]


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in output_records()), encoding="utf-8")
    return path


def _json_rows(path):
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_sharegpt(row):
    """LLaMA-Factory's rules (hiyouga/LLaMA-Factory data/README.md "Sharegpt Format", and
    src/llamafactory/data/converter.py SharegptDatasetConverter, which drops a row breaking them):
    human turns odd, gpt turns even, an even count; mm_plugin wants one <video> per video, <image> per image."""
    turns = row["conversations"]
    assert len(turns) % 2 == 0
    for position, turn in enumerate(turns):
        assert turn["from"] == ("human", "gpt")[position % 2]
    text = "".join(turn["value"] for turn in turns)
    assert text.count("<video>") == len(row["videos"])
    assert text.count("<image>") == len(row["images"] or [])


@pytest.mark.parametrize("keep_errors", [False, True])
def test_llamafactory_loads_in_datasets_with_even_turns(output, tmp_path, keep_errors):
    result = export(output, "llamafactory", keep_errors=keep_errors)
    expected = 7 if keep_errors else 6
    assert result.written == expected and result.path.name == "captions.llamafactory.jsonl"
    rows = _json_rows(result.path)
    assert len(rows) == expected
    for row in rows:
        _check_sharegpt(row)
    assert rows[0]["conversations"][0]["value"] == "<video>Describe the video."
    assert rows[0]["conversations"][1]["value"] == "A red ball rolls."
    by_id = {row["id"]: row for row in rows}
    assert by_id[5]["conversations"][0]["value"] == "<video>What happens?"  # already placed: kept
    assert by_id[4]["conversations"][0]["value"] == "<image>What is shown?"
    assert by_id[6]["conversations"][0]["value"].startswith("<video><video>")
    assert (2 in by_id) is keep_errors
    # caption_meta: the same keys on every row, absent ones null
    key_sets = {tuple(row["caption_meta"]) for row in rows}
    assert len(key_sets) == 1
    assert {"windows", "summary", "chosen"} <= set(rows[0]["caption_meta"])
    assert rows[0]["caption_meta"]["windows"] is None
    streamed = datasets.load_dataset("json", data_files=str(result.path), split="train", streaming=True)
    assert sum(1 for _ in streamed) == expected
    loaded = datasets.load_dataset("json", data_files=str(result.path), split="train")
    assert loaded.num_rows == expected and "videos" in loaded.column_names


def test_swift_rows_follow_its_standard_format(output):
    """ms-swift docs/source_en/Customization/Custom-dataset.md, "Multimodal": ``messages`` of role/content,
    ``videos``/``images`` lists, one ``<video>``/``<image>`` tag per item."""
    result = export(output, "swift")
    rows = _json_rows(result.path)
    assert result.written == len(rows) == 6
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"]
        text = row["messages"][0]["content"]
        assert text.count("<video>") == len(row.get("videos", []))
        assert text.count("<image>") == len(row.get("images", []))
    loaded = datasets.load_dataset("json", data_files=str(result.path), split="train")
    assert loaded.num_rows == 6


def test_llava_video_rows_take_one_video_each(output):
    """LLaVA-NeXT llava/train/train.py LazySupervisedDataset: ``json.load`` of an array, ``video`` one path,
    ``<image>`` (DEFAULT_IMAGE_TOKEN) in the human turn for the video."""
    result = export(output, "llava-video")
    rows = json.loads(result.path.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and result.written == len(rows) == 5
    assert result.skipped["LLaVA-Video takes one video, or images, per record"] == 1
    for row in rows:
        assert isinstance(row.get("video", ""), str)
        human, gpt = row["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].count("<image>") == 1 and "<video>" not in human["value"]
    assert rows[0]["conversations"][0]["value"] == "<image>\nDescribe the video."
    assert datasets.load_dataset("json", data_files=str(result.path), split="train").num_rows == 5


def test_parquet_loads_in_pyarrow_and_streams_in_datasets(output, tmp_path):
    result = export(output, "parquet", tmp_path / "out" / "train.parquet")
    table = pq.read_table(result.path)
    assert table.num_rows == result.written == 6
    meta_type = table.schema.field("caption_meta").type
    assert {"windows", "summary", "chosen", "status"} <= {
        meta_type.field(i).name for i in range(meta_type.num_fields)
    }
    assert meta_type.field("frames").type == pa.float64()  # 8 and 4.5: one numeric type
    assert meta_type.field("windows").type == pa.string()  # nested: JSON text
    rows = table.to_pylist()
    windows = [json.loads(r["caption_meta"]["windows"]) for r in rows if r["caption_meta"]["windows"]]
    assert windows == [[{"start": 0.0, "end": 30.0, "caption": "walk", "status": "ok"}]]
    for row in rows:
        _check_sharegpt(row)
    streamed = datasets.load_dataset("parquet", data_files=str(result.path), split="train", streaming=True)
    assert sum(1 for _ in streamed) == 6


def test_empty_export_still_has_its_columns(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([_record(["a.mp4"], None, _meta("error"))]), encoding="utf-8")
    result = export(path, "parquet")
    assert result.written == 0 and pq.read_table(result.path).num_rows == 0


def test_cli_reports_counts_and_config_keys(output, tmp_path, capsys):
    renamed = tmp_path / "renamed.jsonl"
    lines = []
    for record in output_records():
        record["text"] = record.pop("caption")
        lines.append(json.dumps(record))
    renamed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"input: {renamed}\nkeys: {{caption: text}}\n", encoding="utf-8")
    assert main(["export", str(renamed), "--to", "llamafactory", "--configfile", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 records" in printed and "left out 1: error record" in printed
    assert '"formatting": "sharegpt"' in printed
    rows = _json_rows(tmp_path / "renamed.llamafactory.jsonl")
    assert rows[0]["conversations"][1]["value"] == "A red ball rolls."


def test_every_format_is_covered():
    assert set(FORMATS) == {"llamafactory", "swift", "llava-video", "parquet"}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Describe.", "<image><video>Describe."),
        ("<image><video>Describe.", "<image><video>Describe."),
        ("<video>Describe.", None),  # one video placed, the image not: ambiguous
    ],
)
def test_placeholders(prompt, expected):
    assert with_placeholders(prompt, 1, 1, "<image>", "<video>") == expected


def test_absolute_media_paths_from_the_media_root(output, tmp_path):
    result = export(output, "swift", media_root=tmp_path / "media")
    rows = _json_rows(result.path)
    assert rows[0]["videos"] == [str(tmp_path / "media" / "clips" / "a.mp4")]
    assert (
        main(["export", str(output), "--to", "llava-video", "--absolute", "-o", str(tmp_path / "l.json")])
        == 0
    )
    assert _json_rows(tmp_path / "l.json")[0]["video"] == str(tmp_path / "clips" / "a.mp4")


def test_export_never_replaces_its_output(output, capsys):
    assert (
        main(["export", str(output), "--to", "swift", "-o", str(output)]) == 2
    )  # one line, as every command
    assert "would replace the output" in capsys.readouterr().err
    assert output.read_text(encoding="utf-8").count("\n") == len(output_records())
