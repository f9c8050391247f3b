"""Caption sets in the caption job: visual entries asked with each record's video, kept per entry in the
result store, and what they cost by vLLM's own counters.

The slow tests share one in-process engine (the CPU build, the tiny random Qwen2.5-VL: captions are
gibberish; the tests check fields, statuses, request counts and bytes, never wording).
"""

import gc
import json

import pytest
from helpers import CAPTIONED, make_video, write_records

from vidcap import caption_set, config
from vidcap.caption import caption_shard
from vidcap.config import defaults
from vidcap.result_keys import caption_identity
from vidcap.settings import caption_job, caption_params, caption_params_of_job

ENGINE = {
    **defaults("engine"),
    "max_model_len": 2048,
    "dtype": "bfloat16",
    "enforce_eager": True,
    "cpu_kvcache_space_gb": 1,
}
# 8 frames of 224x224: 256 vision tokens, two of the CPU build's 128-token KV blocks, which the
# prefix cache shares between a record's requests (a block is shared only when full)
FRAMES = {**defaults("frames"), "fps": 2.0, "max_frames": 8, "min_pixels": 3136, "max_pixels": 50176}
SOURCES = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "testsrc", "yuvtestsrc"]
# a small answer schema: a random model fills it within a few tokens
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 24}, "moving": {"type": "boolean"}},
    "required": ["summary", "moving"],
    "additionalProperties": False,
}
SET = {
    "dense": {"prompt": "Describe every detail of the video.", "max_tokens": 10},
    # sampled: greedy decoding of random weights loops on the whitespace the JSON grammar allows
    "camera": {
        "prompt": "How does the camera move?",
        "output_format": "json",
        "max_tokens": 400,
        "sampling": {"temperature": 1.0},
    },
    "tags": {
        "prompt": "List five tags.",
        "system_prompt": "You tag videos.",
        "sampling": {"temperature": 0.7},
    },
}


def load(caption_set_config: dict, **more) -> dict:
    return config.load(None, {"input": "records.json", "caption_set": caption_set_config, **more})


# ----------------------------------------------------------------------------------------- fast
def test_the_caption_set_never_reaches_the_primary_caption_key(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SMALL_SCHEMA))
    plain = load({})
    with_set = load({**SET, "camera": {**SET["camera"], "output_schema": str(schema)}})
    assert "caption_set" not in caption_params(plain)  # no set: the rule's params as before
    params = caption_params(with_set)
    assert list(params["caption_set"]) == ["dense", "camera", "tags"]
    assert params["caption_set"]["camera"]["output_schema"] == SMALL_SCHEMA  # the content, not the path
    model = {"model": "m", "sha256": "x"}
    assert caption_identity(caption_params_of_job(caption_params(plain)), model) == caption_identity(
        caption_params_of_job(params), model
    )


def test_a_derived_entry_is_not_the_caption_jobs():
    params = caption_params(load({**SET, "t2v": {"prompt": "Rewrite as one line.", "from": "dense"}}))
    assert list(params["caption_set"]) == ["dense", "camera", "tags"]


def test_each_entry_has_its_effective_settings_and_its_own_identity():
    job = caption_job(load(SET))
    asks = {a.name: a for a in caption_set.asks(job, {"model": "m"})}
    assert asks["dense"].sampling["max_tokens"] == 10
    assert asks["dense"].system_prompt == job["system_prompt"]
    assert asks["tags"].system_prompt == "You tag videos." and asks["tags"].sampling["temperature"] == 0.7
    assert asks["camera"].judge.json and asks["camera"].json_schema["properties"]["summary"]
    assert len({a.identity for a in asks.values()}) == 3
    # an entry's identity is its settings, not its name nor the other entries
    renamed = caption_set.asks(caption_job(load({"other": SET["dense"]})), {"model": "m"})[0]
    assert renamed.identity == asks["dense"].identity


def test_an_entry_at_temperature_0_cannot_give_several_candidates():
    cfg = load({"a": {"prompt": "x", "sampling": {"temperature": 0}}}, candidates={"n": 2})
    with pytest.raises(config.ConfigError, match="temperature 0"):
        caption_set.asks(caption_job(cfg), {"model": "m"})


def test_provenance_names_each_entry_prompt_and_nothing_without_a_set():
    from vidcap.provenance import run_prompts

    assert "caption_set" not in run_prompts(load({}))
    prompts = run_prompts(load({**SET, "t2v": {"prompt": "One line.", "from": "dense"}}))["caption_set"]
    assert prompts["tags"] == {"prompt": "List five tags.", "system_prompt": "You tag videos."}
    assert prompts["t2v"] == {"prompt": "One line.", "from": "dense"}


def test_the_audit_reads_one_entry_with_its_own_status(tmp_path):
    from vidcap.audit import audit_output

    records = [
        {
            "caption": f"primary {i}",
            "caption_set": {"tags": "red, car, road" if i < 3 else None},
            "caption_meta": {"status": "ok", "set": {"tags": {"status": "ok" if i < 3 else "error"}}},
        }
        for i in range(4)
    ]
    path = write_records(tmp_path / "out.jsonl", records)
    audit = audit_output(path, None, "caption_set.tags")
    assert audit["status"] == {"ok": 3, "error": 1}
    assert audit["exact_duplicates"]["records"] == 3  # one tag line on three records


def test_the_report_gallery_shows_every_entry():
    from vidcap.report.gallery import gallery_card
    from vidcap.report.pages import gallery_html

    record = {
        "video": ["a.mp4"],
        "caption": "main",
        "caption_set": {"dense": "every <detail>", "camera": None},
        "caption_meta": {
            "status": "ok",
            "set": {
                "dense": {"status": "ok", "error": None},
                "camera": {"status": "error", "error": "too long"},
            },
        },
    }
    card = gallery_card({"index": 0, "record": record, "entry": None}, defaults("keys"))
    assert [(e["name"], e["status"], e["caption"]) for e in card["caption_set"]] == [
        ("dense", "ok", "every <detail>"),
        ("camera", "error", None),
    ]
    assert card["caption_set"][1]["error"] == "too long"
    html = gallery_html({"records": 1, "status": {"ok": 1}}, [card], "some/model", 48, 10)
    assert "every &lt;detail&gt;" in html and ">camera <" in html and "too long" in html


# ----------------------------------------------------------------------------------------- slow
@pytest.fixture(scope="module")
def llm(tiny_model_25):
    from vidcap.engine import start_engine

    engine = start_engine(str(tiny_model_25), ENGINE, {"video": 1, "image": 0}, 0)
    yield engine
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    from vidcap.frames import extract_frames

    root = tmp_path_factory.mktemp("sets")
    for i, source in enumerate(SOURCES):
        make_video(root / f"v{i}.mp4", seconds=4, size="224x224", rate=8, source=source)
    records = [{"video": f"v{i}.mp4", "conversation": [{"from": "human", "value": ""}]} for i in range(6)]
    path = write_records(root / "shard.jsonl", records)
    manifest = root / "manifest.json"
    settings = {"keys": {}, "frames": FRAMES, "cache_dir": str(root / "cache"), "media_root": str(root)}
    extract_frames(str(path), str(manifest), settings)
    (root / "small.schema.json").write_text(json.dumps(SMALL_SCHEMA))
    return path, manifest, root


def run(llm, model, shard, out, entries: dict, store, **settings):
    # as in a new caption job's engine: no KV blocks or encoder outputs of an earlier run (reusing them
    # gives the same tokens but other low bits, which random weights turn into other words)
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    cfg = load(entries, model=str(model), prompt="Describe the video.", system_prompt="")
    job = {
        **caption_job(cfg),
        "engine": ENGINE,
        "frames": FRAMES,
        "sampling": {**defaults("sampling"), "temperature": 0.0, "max_tokens": 12, "seed": 0},
        "store": str(store),
        **settings,
    }
    stats = caption_shard(str(shard[0]), str(shard[1]), str(out), job, llm=llm)
    return [json.loads(line) for line in out.read_text().splitlines()], stats


def entries_with_schema(shard) -> dict:
    return {**SET, "camera": {**SET["camera"], "output_schema": str(shard[2] / "small.schema.json")}}


@pytest.mark.slow
def test_six_records_answer_a_set_of_three_and_a_fourth_entry_sends_six(llm, tiny_model_25, shard, tmp_path):
    entries = entries_with_schema(shard)
    results, stats = run(llm, tiny_model_25, shard, tmp_path / "a.jsonl", entries, tmp_path / "store")
    assert stats["requests"] == 6 * 4  # the primary and three entries per record, once each
    for result in results:
        assert list(result["caption_set"]) == ["dense", "camera", "tags"]
        assert all(isinstance(t, str) for t in result["caption_set"].values())
        assert list(result["caption_set_json"]) == ["camera"]
        assert result["caption_set_json"]["camera"], json.dumps(result["caption_meta"]["set"]["camera"])
        assert result["caption_set"]["camera"] == result["caption_set_json"]["camera"]["summary"]
        meta = result["caption_meta"]["set"]
        assert all(meta[n]["status"] in CAPTIONED for n in entries), meta
        assert meta["dense"]["output_tokens"] <= 10  # its own max_tokens
        assert len(result["keys"]) == 4
    assert (
        stats["set"]["dense"]["ok"] + stats["set"]["dense"]["truncated"] + stats["set"]["dense"]["degenerate"]
        == 6
    )

    # one video encoding per record, whatever the number of entries (vLLM's counters, in-process)
    assert stats["vllm"]["encoder_inputs"] == 6, stats["vllm"]
    assert stats["vllm"]["prefix_cache_hits"] > 0
    assert stats["vllm"]["prompt_tokens_computed"] < stats["vllm"]["prompt_tokens"]

    # the primary caption is the one a build without the set writes, byte for byte
    plain, _ = run(llm, tiny_model_25, shard, tmp_path / "plain.jsonl", {}, tmp_path / "plain-store")
    set_fields = ("caption_set", "caption_set_json")
    for with_set, alone in zip(results, plain):
        stripped = {k: v for k, v in with_set.items() if k not in set_fields}
        stripped["caption_meta"] = {k: v for k, v in with_set["caption_meta"].items() if k != "set"}
        stripped["keys"] = stripped["keys"][:1]
        assert json.dumps(stripped) == json.dumps(alone)

    # rebuilt from scratch (a new store) and from the store: the same bytes
    _, again = run(llm, tiny_model_25, shard, tmp_path / "b.jsonl", entries, tmp_path / "store2")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    _, stored = run(llm, tiny_model_25, shard, tmp_path / "c.jsonl", entries, tmp_path / "store")
    assert stored["requests"] == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()

    # a fourth entry: one request per record; removing it again: none; editing one entry: that one's
    more = {**entries, "motion": {"prompt": "What moves?"}}
    four, added = run(llm, tiny_model_25, shard, tmp_path / "d.jsonl", more, tmp_path / "store")
    assert added["requests"] == 6
    assert all(list(r["caption_set"]) == ["dense", "camera", "tags", "motion"] for r in four)
    _, removed = run(llm, tiny_model_25, shard, tmp_path / "e.jsonl", entries, tmp_path / "store")
    assert removed["requests"] == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "e.jsonl").read_bytes()
    edited = {**entries, "tags": {**entries["tags"], "prompt": "List three tags."}}
    _, changed = run(llm, tiny_model_25, shard, tmp_path / "f.jsonl", edited, tmp_path / "store")
    assert changed["requests"] == 6


@pytest.mark.slow
def test_a_workflow_build_on_the_server_writes_every_entry_and_a_new_entry_sends_six(
    tiny_model, tiny_server, tmp_path
):
    """The whole workflow (frames, caption jobs on the session's vllm serve, the derived step, merge): three
    visual entries (one json) and one derived from a visual one in every record; a fourth visual entry added
    to the built dataset sends one caption request per record, and the derived entry is not asked again."""
    from helpers import SERVER_KEY_ENV, caption_stats, requests_sent, run_snakemake, tiny_config

    for i, source in enumerate(SOURCES):
        make_video(tmp_path / f"v{i}.mp4", seconds=1, source=source)
    write_records(tmp_path / "records.json", [{"video": [f"v{i}.mp4"], "id": i} for i in range(6)])
    (tmp_path / "small.schema.json").write_text(json.dumps(SMALL_SCHEMA))
    entries = {**SET, "camera": {**SET["camera"], "output_schema": str(tmp_path / "small.schema.json")}}
    entries["t2v"] = {"prompt": "Rewrite as one line.", "from": "dense", "max_tokens": 8}
    server = {"backend": "server", "url": tiny_server, "api_key_env": SERVER_KEY_ENV}
    config = tiny_config(tiny_model, shards=2, engine=server, caption_set=entries)
    run_snakemake(tmp_path, config)
    out = json.loads((tmp_path / "captions.json").read_text())
    names = ["camera", "dense", "t2v", "tags"]  # the config file's order (run_snakemake sorts keys)
    for record in out:
        assert list(record)[-4:] == ["caption", "caption_set", "caption_set_json", "caption_meta"]
        assert list(record["caption_set"]) == names
        assert list(record["caption_meta"]["set"]) == names
        assert all(m["status"] in CAPTIONED for m in record["caption_meta"]["set"].values()), record
        assert list(record["caption_set_json"]) == ["camera"]
    assert sum(s["requests"] for s in caption_stats(tmp_path / "results").values()) == 6 * 4

    before = caption_stats(tmp_path / "results")
    more = {**config, "caption_set": {**entries, "motion": {"prompt": "What moves?"}}}
    run_snakemake(tmp_path, more)
    assert requests_sent(tmp_path / "results", before) == 6
    again = json.loads((tmp_path / "captions.json").read_text())
    assert [r["caption"] for r in again] == [r["caption"] for r in out]
    assert [r["caption_set"]["dense"] for r in again] == [r["caption_set"]["dense"] for r in out]
    assert all(list(r["caption_set"]) == ["camera", "dense", "motion", "t2v", "tags"] for r in again)
    assert [r["caption_set"]["t2v"] for r in again] == [r["caption_set"]["t2v"] for r in out]
