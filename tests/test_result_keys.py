"""The result store's keys: every setting has a role, and every setting that shapes an answer is in its key."""

import copy
import json
import multiprocessing
import os

import pytest

from vidcap import config as vconfig
from vidcap import settings as vsettings
from vidcap.frames import frame_params_key
from vidcap.records import record_prompt
from vidcap.result_keys import (
    ASR,
    CAPTION,
    FRAMES,
    OUTPUT,
    RUN,
    SET,
    SETTING_ROLES,
    SUMMARY,
    caption_identity,
    record_key,
    summary_identity,
)
from vidcap.store import ResultStore

RECORD = {"video": ["a.mp4"], "question": "What happens?"}
ENTRY = {"videos": [{"path": "a.mp4", "frames": "cache/ab/0123abcd.npy", "meta": {}}], "images": []}
# values for settings whose type alone does not give a valid other value
CHANGED = {
    "input": "elsewhere/records.json",
    "keys.prompt": "question",
    "frames.reduce": "fps_first",
    "engine.vllm_args": {"quantization": "fp8"},
    "quality.language": "en",
    "long_video.mode": "single",
    # a derived entry: in the summary step's params, never in a caption or summary key
    "caption_set": {"short": {"prompt": "Rewrite it in one sentence.", "from": "caption"}},
}


def schema_settings(node=None, prefix=""):
    node = node or vconfig.schema()
    for key, child in node.get("properties", {}).items():
        if child.get("type") == "object" and "properties" in child:
            yield from schema_settings(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", child


def other_value(name: str, node: dict, value):
    """A valid value different from ``value`` for the setting ``name``."""
    if name in CHANGED:
        return CHANGED[name]
    if node.get("enum"):
        return next(v for v in node["enum"] if v != value)
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if isinstance(value, bool) or "boolean" in kinds:
        return not value
    if "integer" in kinds:
        return (value or 0) + 3
    if "number" in kinds:
        return round((value or 0) + 0.25, 2)
    if "string" in kinds:
        return f"{value or ''}changed"
    if "object" in kinds:
        return {**(value or {}), "changed": 1}
    raise AssertionError(f"no other value for {name} ({kinds})")


def with_setting(name: str, value) -> dict:
    config = vconfig.defaults()
    config["input"] = "records.json"
    if name == "output_schema":  # read only with output_format json
        config["output_format"] = "json"
    node = config
    *path, leaf = name.split(".")
    for part in path:
        node = node[part]
    node[leaf] = value
    return config


def answer_key(config: dict, tmp_path) -> str:
    """A record's result key as a caption job computes it (the model's identity: its name, a hub id)."""
    if config["output_schema"]:
        path = tmp_path / "schema.json"
        path.write_text(json.dumps({"type": "object", "properties": {"summary": {"type": "string"}}}))
        config["output_schema"] = str(path)
    params = vsettings.caption_params(config)
    identity = caption_identity(params, {"model": config["model"]})
    return record_key(identity, record_prompt(RECORD, config["keys"], config["prompt"]), ENTRY)


def frames_key(config: dict) -> str:
    """What the frame-cache keys inside every result key depend on, besides the file itself."""
    return json.dumps(
        [
            frame_params_key(vsettings.frame_params(config)),
            vsettings.window_settings(config),
            vsettings.media_root(config),
            config["media_root_only"],
            config["keys"]["video"],
            config["keys"]["image"],
        ],
        sort_keys=True,
    )


def summary_key_of(config: dict) -> str:
    params = vsettings.summary_params(config)
    return json.dumps([summary_identity(params, {"model": params["model"]}), params["prompt"]])


def test_every_setting_has_a_role():
    names = {name for name, _ in schema_settings()}
    assert names - set(SETTING_ROLES) == set(), "classify the new setting in vidcap.result_keys.SETTING_ROLES"
    assert set(SETTING_ROLES) - names == set(), "a role for a setting the schema does not have"
    assert set(SETTING_ROLES.values()) <= {CAPTION, FRAMES, SUMMARY, OUTPUT, RUN, ASR, SET}


@pytest.mark.parametrize("name", [n for n, _ in schema_settings()])
def test_changing_a_setting_changes_the_keys_of_its_role(name, tmp_path):
    """A caption setting changes every record's result key; a frames setting the frame-cache key (and so
    every result key); a summary setting the summary key; output and run settings change no key."""
    node = dict(schema_settings())[name]
    default = "records.json" if name == "input" else node.get("default")
    before = with_setting(name, copy.deepcopy(default))
    after = with_setting(name, other_value(name, node, default))
    role = SETTING_ROLES[name]
    changed = {
        CAPTION: answer_key(before, tmp_path) != answer_key(after, tmp_path),
        FRAMES: frames_key(before) != frames_key(after),
        SUMMARY: summary_key_of(before) != summary_key_of(after),
    }
    if role in changed:
        assert changed[role], f"{name} ({role}) does not reach its key"
    if role in (OUTPUT, RUN):
        assert not any(changed.values()), f"{name} is {role} but changes a key: {changed}"
    if role == FRAMES:
        assert answer_key(before, tmp_path) == answer_key(after, tmp_path)  # only through the frames
    if role == SET:  # an entry's own keys only (tests/test_caption_set_job.py)
        assert not changed[CAPTION], f"{name} reaches the primary caption's key"


def test_the_model_weights_are_in_the_key_not_the_folder_name():
    params = vsettings.caption_params(vconfig.defaults())
    same = caption_identity(params, {"model": "/a/qwen", "sha256": "1"})
    assert same == caption_identity(params, {"model": "/b/moved", "sha256": "1"})
    assert same != caption_identity(params, {"model": "/a/qwen", "sha256": "2"})


# ---------------------------------------------------------------------------------------------- store
def test_store_round_trip_and_what_counts_as_a_miss(tmp_path):
    store = ResultStore(tmp_path)
    assert store.get("ab" * 16) is None and not store.has("ab" * 16)
    store.put("ab" * 16, {"caption": "x", "caption_meta": {"status": "ok", "error": None, "attempts": 1}})
    assert store.has("ab" * 16) and store.get("ab" * 16)["caption"] == "x"
    # the order a fresh answer is written in: a stored one must give the same output bytes
    assert list(store.get("ab" * 16)["caption_meta"]) == ["status", "error", "attempts"]
    store.path("cd" * 16).parent.mkdir(parents=True, exist_ok=True)
    store.path("cd" * 16).write_text('{"key": "cdcd', encoding="utf-8")  # cut short by a crash
    assert store.get("cd" * 16) is None
    store.path("ef" * 16).parent.mkdir(parents=True, exist_ok=True)
    store.path("ef" * 16).write_text(json.dumps({"key": "other", "value": {}}))  # copied in by hand
    assert store.get("ef" * 16) is None
    assert (store.hits, store.writes) == (2, 1)


def _write_many(root: str, worker: int) -> None:
    store = ResultStore(root)
    for i in range(300):
        store.put("aa" * 16, {"caption": f"{worker}-{i}" * 200, "caption_meta": {"status": "ok"}})


def test_two_writers_of_one_entry_leave_a_whole_entry(tmp_path):
    """One video listed in two shards: both caption jobs store its answer; a reader never sees a torn file."""
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(2)]
    for proc in writers:
        proc.start()
    store, seen = ResultStore(tmp_path), 0
    while any(p.is_alive() for p in writers):
        if store.has("aa" * 16):
            value = store.get("aa" * 16)
            assert value is not None and value["caption"].count("-") == 200
            seen += 1
    for proc in writers:
        proc.join()
        assert proc.exitcode == 0
    assert store.get("aa" * 16) is not None
    assert [p for p in os.listdir(store.path("aa" * 16).parent) if not p.endswith(".json")] == []
