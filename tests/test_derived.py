"""Derived caption-set entries (vidcap.derived) and text answers read as captions (vidcap.text_requests):
pure parts, and the store path that starts no engine. End to end: tests/test_long_workflow.py."""

import pytest

from vidcap import config as vconfig
from vidcap import settings as vsettings
from vidcap.derived import Derived, derived_text, levels
from vidcap.store import ResultStore
from vidcap.text_requests import TextAnswer, TextEngine, read_answer

SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string"}, "events": {"type": "array"}},
    "required": ["summary"],
}


def config_with(caption_set):
    return vconfig.load(
        overrides={"input": "r.json", "model": "/nonexistent/model", "caption_set": caption_set}
    )


def test_derived_params_resolve_over_the_top_level_and_come_in_dependency_order():
    config = config_with(
        {
            "tags": {"prompt": "Tags of it.", "from": "short", "max_tokens": 16},
            "short": {"prompt": "One sentence.", "from": "caption", "sampling": {"temperature": 0.5}},
            "camera": {"prompt": "Camera motion?"},  # visual: the caption job's
        }
    )
    params = vsettings.derived_params(config)
    assert [p["name"] for p in params] == ["short", "tags"]
    assert params[0]["sampling"]["temperature"] == 0.5 and params[0]["sampling"]["max_tokens"] == 2048
    assert params[1]["sampling"]["max_tokens"] == 16 and params[1]["system_prompt"] == config["system_prompt"]
    assert [[p["name"] for p in level] for level in levels(params)] == [["short"], ["tags"]]
    assert vsettings.needs_summary_step({**config, "long_video": {**config["long_video"], "mode": "single"}})
    # the caption rule's params do not hold them: editing one reruns no caption job
    assert "One sentence." not in str(vsettings.caption_params(config))
    assert vsettings.summary_params(config)["derived"] == params


def test_a_text_answer_reads_as_a_caption_with_candidates_and_json():
    answer = TextAnswer(['{"summary": "a dog", "events": []}', "not json"], ["stop", "length"], 20, 9)
    out = read_answer(answer, "all", SCHEMA, 10.0)
    assert out["text"] == "a dog" and out["json"] == {"summary": "a dog", "events": []}
    assert out["captions"] == ["a dog", "not json"] and out["status"] == "ok"
    bad = read_answer(TextAnswer(["{"], ["length"]), "first", SCHEMA)
    assert (
        bad["status"] == "degenerate"
        and bad["json"] is None
        and bad["json_error"] == "json: cut at max_tokens"
    )
    assert read_answer(TextAnswer([], [], error="too long: 9"))["status"] == "error"


def test_stored_derived_answers_fill_every_record_without_an_engine(tmp_path):
    config = config_with(
        {"short": {"prompt": "One sentence.", "from": "caption"}, "seen": {"prompt": "What?"}}
    )
    settings = {**vsettings.summary_job(config), "store": str(tmp_path / "store")}
    store = ResultStore(settings["store"])
    results = [
        {"caption": "a red car", "caption_meta": {"status": "ok"}, "caption_set": {"seen": "x"}, "keys": []},
        {"caption": None, "caption_meta": {"status": "error"}, "keys": []},
    ]
    derived = Derived(settings["derived"], settings, store)
    p = settings["derived"][0]
    from vidcap.result_keys import derived_key

    key = derived_key(derived.identity(p), "a red car")
    store.put(
        key,
        {
            "text": "A red car.",
            "status": "ok",
            "error": None,
            "prompt_tokens": 5,
            "output_tokens": 3,
            "finish_reason": "stop",
        },
    )
    with TextEngine(settings, None) as engine:  # every answer stored: nothing is asked, no engine starts
        derived.answer(lambda: ((False, r) for r in results), engine)
    for i, result in enumerate(results):
        derived.apply(result, i)
    ok, failed = results
    assert ok["caption_set"] == {"short": "A red car.", "seen": "x"}  # config order
    assert ok["caption_meta"]["set"]["short"]["status"] == "ok" and ok["keys"] == [key]
    assert failed["caption_set"] == {"short": None}
    assert failed["caption_meta"]["set"]["short"]["status"] == "error"
    assert derived.counts == {"asked": 0, "stored": 1, "errors": 1}
    assert derived_text("One sentence.", " a red car ") == "One sentence.\n\na red car"


def test_derived_schema_errors_name_the_entry(tmp_path):
    config = config_with(
        {
            "short": {
                "prompt": "x",
                "from": "caption",
                "output_format": "json",
                "output_schema": str(tmp_path / "no.json"),
            }
        }
    )
    with pytest.raises(vconfig.ConfigError, match="caption_set.short.output_schema"):
        vsettings.derived_params(config)


def test_entries_derived_from_a_visual_entry_or_a_derived_one_read_that_text(tmp_path):
    config = config_with(
        {
            "seen": {"prompt": "What?"},
            "again": {"prompt": "Shorter.", "from": "short"},
            "short": {"prompt": "One sentence.", "from": "seen"},
        }
    )
    settings = {**vsettings.summary_job(config), "store": str(tmp_path / "store")}
    store = ResultStore(settings["store"])
    derived = Derived(settings["derived"], settings, store)
    short, again = settings["derived"]
    from vidcap.result_keys import derived_key

    answer = {"status": "ok", "error": None, "prompt_tokens": 1, "output_tokens": 1, "finish_reason": "stop"}
    store.put(derived_key(derived.identity(short), "a cat"), {"text": "A cat.", **answer})
    store.put(derived_key(derived.identity(again), "A cat."), {"text": "Cat.", **answer})
    results = [
        {
            "caption": "c",
            "caption_meta": {"status": "ok", "set": {"seen": {"status": "ok"}}},
            "caption_set": {"seen": "a cat"},
        },
        {
            "caption": "c",
            "caption_meta": {"status": "ok", "set": {"seen": {"status": "error"}}},
            "caption_set": {"seen": None},
        },
    ]
    with TextEngine(settings, None) as engine:
        derived.answer(lambda: ((False, r) for r in results), engine)
    for i, result in enumerate(results):
        derived.apply(result, i)
    assert results[0]["caption_set"] == {"seen": "a cat", "again": "Cat.", "short": "A cat."}  # config order
    assert results[1]["caption_set"] == {"seen": None, "again": None, "short": None}
    assert list(results[1]["caption_meta"]["set"]) == ["seen", "again", "short"]


def test_a_derived_json_entry_puts_its_object_where_a_visual_one_does(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object", "properties": {"summary": {"type": "string"}}}')
    config = config_with(
        {
            "seen": {"prompt": "What?", "output_format": "json", "output_schema": str(schema)},
            "short": {
                "prompt": "x",
                "from": "caption",
                "output_format": "json",
                "output_schema": str(schema),
            },
            "plain": {"prompt": "y", "from": "caption"},
        }
    )
    settings = {**vsettings.summary_job(config), "store": str(tmp_path / "store")}
    store = ResultStore(settings["store"])
    derived = Derived(settings["derived"], settings, store)
    from vidcap.result_keys import derived_key

    answer = {"status": "ok", "error": None, "prompt_tokens": 1, "output_tokens": 1, "finish_reason": "stop"}
    short, plain = settings["derived"]
    store.put(derived_key(derived.identity(short), "c"), {"text": "A.", **answer, "json": {"summary": "A."}})
    store.put(derived_key(derived.identity(plain), "c"), {"text": "B.", **answer})
    result = {
        "caption": "c",
        "caption_meta": {"status": "ok", "set": {"seen": {"status": "ok"}}},
        "caption_set": {"seen": "s"},
        "caption_set_json": {"seen": {"summary": "s"}},
    }
    with TextEngine(settings, None) as engine:
        derived.answer(lambda: iter([(False, result)]), engine)
    derived.apply(result, 0)
    assert result["caption_set_json"] == {"seen": {"summary": "s"}, "short": {"summary": "A."}}
    assert "json" not in result["caption_meta"]["set"]["short"]
    assert result["caption_set"] == {"seen": "s", "short": "A.", "plain": "B."}
