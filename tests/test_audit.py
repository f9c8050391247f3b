"""The dataset audit (duplicates, openings, length outliers) and the build diff, on hand-made output files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import write_records
from vidcap.__main__ import main
from vidcap.audit import audit_output
from vidcap.diff import diff_outputs

PLANTED = "A red car drives down a wet city street at night while neon signs reflect on the asphalt."
NEAR = "A woman in a yellow raincoat walks her small white dog through a park full of orange autumn leaves."
OTHERS = [
    "Two children build a sandcastle on a sunny beach as waves roll in behind them.",
    "A chef slices onions on a wooden board and slides them into a hot pan.",
    "A drone flies over a snowy mountain ridge at sunrise, revealing a frozen lake.",
    "An old man feeds pigeons on a bench in a busy city square.",
    "A cyclist races down a forest trail, splashing through a muddy puddle.",
    "Fireworks burst over a harbor while boats bob on the dark water.",
    "A cat watches raindrops run down a window from a cozy armchair.",
    "A street musician plays the violin while people drop coins into the case.",
]


def _record(i: int, caption, status: str = "ok", prompt: str = "Describe the video.", seed: int = 7) -> dict:
    record = {
        "video": f"clips/{i}.mp4",
        "conversation": [{"from": "human", "value": prompt}],
        "caption_meta": {
            "status": status,
            "error": None,
            "frames": 8,
            "halved": False,
            "prompt_tokens": 300,
            "output_tokens": 20,
            "finish_reason": "stop",
            "seed": seed + i,
        },
    }
    if caption is not None:
        record["caption"] = caption
    return record


def _audit_records() -> list[dict]:
    captions = list(OTHERS)
    captions.insert(1, PLANTED)  # 1
    captions.insert(
        4, "  a red CAR drives down a wet city street, at night while neon signs reflect on the asphalt"
    )  # 4
    captions.insert(6, NEAR)  # 6
    captions.insert(9, NEAR.replace("small white", "small brown"))  # 9
    captions.append(PLANTED)  # 12
    records = [_record(i, c) for i, c in enumerate(captions)]
    records.append(_record(len(records), None, status="error"))  # 13
    records.append(_record(len(records), "Dog."))  # 14: a length outlier
    return records


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_audit_names_planted_exact_and_near_duplicates(tmp_path, suffix):
    path = write_records(tmp_path / f"captions{suffix}", _audit_records())
    audit = audit_output(path)
    assert audit["records"] == 15 and audit["captioned"] == 14
    assert audit["status"] == {"ok": 14, "error": 1}
    exact = audit["exact_duplicates"]
    assert (exact["groups"], exact["records"]) == (1, 3)
    assert exact["top"][0]["indices"] == [1, 4, 12] and exact["top"][0]["caption"] == PLANTED
    near = audit["near_duplicates"]
    assert (near["groups"], near["records"]) == (1, 2)
    assert near["top"][0]["indices"] == [6, 9]
    assert near["top"][0]["examples"][0] == NEAR
    assert audit["openings"][0] == {
        "opening": "a red car drives down",
        "count": 3,
        "share": round(3 / 14, 4),
        "example_index": 1,
    }
    assert audit["length_words"]["short_indices"] == [14]


def test_audit_without_duplicates_lists_none(tmp_path):
    path = write_records(tmp_path / "c.jsonl", [_record(i, c) for i, c in enumerate(OTHERS)])
    audit = audit_output(path)
    assert audit["exact_duplicates"]["groups"] == 0 and audit["near_duplicates"]["groups"] == 0
    assert audit["openings"] == []


def test_audit_threshold_is_config(tmp_path):
    path = write_records(tmp_path / "c.jsonl", _audit_records())
    # one changed word in 19 is Jaccard ~0.8: a stricter threshold no longer groups them
    assert audit_output(path, {"near_duplicate_jaccard": 0.95})["near_duplicates"]["groups"] == 0


def test_audit_command_text_and_json(tmp_path, capsys):
    path = write_records(tmp_path / "c.json", _audit_records())
    assert main(["audit", str(path)]) == 0
    text = capsys.readouterr().out
    assert "exact duplicates (ignoring case, spacing, punctuation): 1 groups, 3 records" in text
    assert "records 1, 4, 12" in text and "6, 9" in text
    assert main(["audit", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["near_duplicates"]["top"][0]["indices"] == [6, 9]


def _builds(tmp_path, changed=(1, 3), n=6, provenance=None):
    """Two builds of one input: the second uses a new prompt on records ``changed`` (captions differ there)."""
    old = [_record(i, f"Caption {i} of the first build.") for i in range(n)]
    new = [_record(i, f"Caption {i} of the first build.") for i in range(n)]
    for i in changed:
        new[i] = _record(i, f"Caption {i} with the new prompt.", prompt="List every object you see.")
    a = write_records(tmp_path / "old" / "captions.json", old)
    b = write_records(tmp_path / "new" / "captions.json", new)
    for path, prov in zip((a, b), provenance or ()):
        (path.parent / "provenance.json").write_text(json.dumps(prov))
    return a, b


def test_diff_after_a_prompt_change_names_exactly_the_changed_records(tmp_path):
    old, new = _builds(tmp_path, changed=(1, 3))
    result = diff_outputs(old, new)
    assert [c["index"] for c in result["changes"]] == [1, 3]
    assert result["changed"] == 2
    assert all(c["reasons"] == ["prompt"] for c in result["changes"])
    assert result["changes"][0]["new"] == "Caption 1 with the new prompt."


def test_diff_names_run_level_causes_from_provenance(tmp_path):
    base = {
        "model": "m",
        "weights_hash": "h1",
        "sampling": {"temperature": 0.7},
        "frames": {"fps": 2.0},
        "engine": {},
        "versions": {"vllm": "0.32"},
        "config_hash": "c1",
    }
    changed = {**base, "sampling": {"temperature": 0.2}, "weights_hash": "h2"}
    old, new = _builds(tmp_path, changed=(2,), provenance=(base, changed))
    result = diff_outputs(old, new)
    assert set(result["run_differences"]) == {"sampling", "weights_hash"}
    assert result["changes"][0]["reasons"] == ["prompt", "model", "sampling"]


def test_diff_names_record_level_frames_and_seed(tmp_path):
    old_records = [_record(i, f"c{i}") for i in range(3)]
    new_records = [_record(i, f"c{i}") for i in range(3)]
    new_records[0] = _record(0, "other", seed=100)
    new_records[2] = {
        **_record(2, "third"),
        "caption_meta": {**_record(2, "")["caption_meta"], "frames": 4, "halved": True},
    }
    old = write_records(tmp_path / "a.jsonl", old_records)
    new = write_records(tmp_path / "b.jsonl", new_records)
    changes = diff_outputs(old, new)["changes"]
    assert [c["index"] for c in changes] == [0, 2]
    assert changes[0]["reasons"] == ["sampling: seed 7 -> 100"]
    assert changes[1]["reasons"] == ["frames: frames 8 -> 4", "frames: halved False -> True"]


def test_diff_with_nothing_recorded_says_unexplained(tmp_path):
    old = write_records(tmp_path / "a.jsonl", [_record(0, "one")])
    new = write_records(tmp_path / "b.jsonl", [_record(0, "two")])
    assert diff_outputs(old, new)["changes"][0]["reasons"][0].startswith("unexplained")


def test_diff_checks_media_paths_and_record_counts(tmp_path, capsys):
    old = write_records(tmp_path / "a.jsonl", [_record(i, "same") for i in range(3)])
    moved = [_record(i, "same") for i in range(3)]
    moved[1]["video"] = "clips/other.mp4"
    new = write_records(tmp_path / "b.jsonl", moved)
    changes = diff_outputs(old, new)["changes"]
    assert [c["index"] for c in changes] == [1] and changes[0]["reasons"][0].startswith("media: paths differ")
    short = write_records(tmp_path / "c.jsonl", [_record(i, "same") for i in range(2)])
    with pytest.raises(ValueError, match="has 3 records, .* has 2"):
        diff_outputs(old, short)
    assert main(["diff", str(old), str(short)]) == 1
    assert "has 3 records" in capsys.readouterr().err


def test_diff_command_lists_changes(tmp_path, capsys):
    old, new = _builds(tmp_path, changed=(0, 4))
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "record 0: prompt" in out and "record 4: prompt" in out and "record 1" not in out
    assert out.strip().endswith("2 records changed")


def test_diff_names_quality_settings_from_provenance(tmp_path):
    base = {"model": "m", "quality": {"candidates": {"n": 1, "keep": "first"}}, "config_hash": "c1"}
    changed = {**base, "quality": {"candidates": {"n": 4, "keep": "consensus"}}, "config_hash": "c2"}
    old, new = _builds(tmp_path, changed=(0,), provenance=(base, changed))
    result = diff_outputs(old, new)
    assert set(result["run_differences"]) == {"quality"}
    assert result["changes"][0]["reasons"] == ["prompt", "quality"]
