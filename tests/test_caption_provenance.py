"""Provenance: model identity, versions and settings per caption job, gathered next to the output."""

import json
import shutil

from vidcap import __version__, config
from vidcap.atomic import write_json
from vidcap.diff import output_provenance
from vidcap.provenance import (
    job_provenance,
    model_identity,
    provenance_path,
    run_prompts,
    write_provenance,
)

SETTINGS = {"model": None, "prompt": "Describe.", "system_prompt": "", "keys": {}, "sampling": {"seed": 0}}


def test_model_identity_pins_the_weights(tiny_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    first = model_identity(str(copy))
    assert first == {**model_identity(str(copy)), "model": str(copy)}
    assert first["weights_bytes"] > 0 and len(first["weights_hash"]) == 64
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy))["weights_hash"] != first["weights_hash"]


def test_hub_id_without_cache_records_no_revision():
    assert model_identity("nobody/not-a-model") == {"model": "nobody/not-a-model", "revision": None}


def test_job_provenance_and_gathering(tiny_model, tmp_path):
    settings = {**SETTINGS, "model": str(tiny_model)}
    engine = {"max_model_len": 4096, "dtype": "bfloat16", "env": {"X": "1"}, "threads": 2}
    record = job_provenance(settings, engine, {"fps": 2.0})
    versions = record["versions"]
    assert versions["vllm"].startswith("vllm") and versions["torch"].startswith("torch")
    assert versions["transformers"].startswith("transformers") and versions["ffmpeg"].startswith(
        "ffmpeg version"
    )
    assert record["frames"] == {"fps": 2.0} and "env" not in record["engine"]
    assert (
        job_provenance(settings, {**engine, "threads": 8}, {"fps": 2.0})["config_hash"]
        == record["config_hash"]
    )
    assert job_provenance(settings, engine, {"fps": 1.0})["config_hash"] != record["config_hash"]

    write_json(tmp_path / "0000.stats.json", {"records": 2, "provenance": record})
    write_json(tmp_path / "0001.stats.json", {"records": 0})  # nothing to caption: no engine, no provenance
    write_json(tmp_path / "0002.stats.json", {"records": 1, "provenance": record})
    out = provenance_path(tmp_path / "captions.json")
    assert out == tmp_path / "captions.json.provenance.json"
    stats = [str(tmp_path / f"000{i}.stats.json") for i in range(3)]
    result = write_provenance(stats, out, extra={"output": "captions.json"})
    assert json.loads(out.read_text()) == result
    assert result["consistent"] and result["config_hash"] == record["config_hash"]
    assert result["shards"] == 3 and result["vidcap"]["version"] == __version__

    other = {**record, "versions": {**versions, "vllm": "vllm 0.0.1"}}
    write_json(tmp_path / "0002.stats.json", {"records": 1, "provenance": other})
    result = write_provenance(stats, out)
    assert not result["consistent"]
    assert [v["shards"] for v in result["variants"]] == [["0000"], ["0002"]]


def test_model_folder_hashed_once_and_git_never_read(tiny_model, tmp_path, monkeypatch):
    """Caption jobs of a build share one hash per model folder; .git (LFS objects) is not the weights."""
    monkeypatch.setenv("VIDCAP_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    lfs = copy / ".git" / "lfs" / "objects"
    lfs.mkdir(parents=True)
    (lfs / "blob").write_bytes(b"x" * 1000)
    first = model_identity(str(copy))
    assert len(list((tmp_path / "cache" / "model-identity").glob("*.json"))) == 1
    (lfs / "blob").write_bytes(b"y" * 2000)  # another .git object: not part of the model
    assert model_identity(str(copy)) == first  # from the cache, .git ignored
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # a new file identity: hashed again
    assert model_identity(str(copy))["weights_hash"] != first["weights_hash"]
    assert len(list((tmp_path / "cache" / "model-identity").glob("*.json"))) == 2


def test_two_outputs_in_one_folder_keep_their_own_provenance(tmp_path):
    """Each output's provenance names its prompts; a second output beside it does not overwrite it."""
    write_json(tmp_path / "0000.stats.json", {"records": 1, "provenance": {"model": "m"}})
    stats = [str(tmp_path / "0000.stats.json")]
    outputs = {"short.jsonl": "Describe briefly.", "long.json": "Describe in detail."}
    for name, prompt in outputs.items():
        cfg = config.load(None, {"input": "records.json", "prompt": prompt})
        extra = {"output": name, "prompts": run_prompts(cfg)}
        write_provenance(stats, provenance_path(tmp_path / name), extra)
    for name, prompt in outputs.items():
        recorded = output_provenance(tmp_path / name)
        assert recorded["output"] == name and recorded["prompts"]["prompt"] == prompt
        assert recorded["prompts"]["summary_prompt"] == config.defaults("long_video")["summary_prompt"]
        assert recorded["shards"] == 1
    single = config.load(None, {"input": "x.json", "long_video": {"mode": "single"}})
    assert "summary_prompt" not in run_prompts(single)


def test_vidcap_version_names_the_checkout_commit():
    import subprocess

    from vidcap.provenance import vidcap_version

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    found = vidcap_version()
    assert found["version"] == __version__
    assert found["commit"] == (head or None)


def test_provenance_of_earlier_builds_is_still_found(tmp_path):
    """Builds before per-output files wrote one provenance.json per folder: diff still reads it."""
    write_json(tmp_path / "provenance.json", {"output": str(tmp_path / "captions.json"), "model": "m"})
    assert output_provenance(tmp_path / "captions.json")["model"] == "m"
    assert output_provenance(tmp_path / "other.json") is None
