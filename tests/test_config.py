"""The configuration's one source of defaults (the schema) and the check that refuses misspelt keys."""

import subprocess
from pathlib import Path

import pytest
import yaml

from vidcap import config, settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_come_from_the_schema_only():
    values = config.defaults()
    assert values["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert values["sampling"] == {**values["sampling"], "temperature": 0.7, "top_p": 0.9, "max_tokens": 2048}
    assert values["engine"]["max_model_len"] == 51200 and values["frames"]["patch_factor"] is None
    # config.yaml only shows them: every value it sets equals the schema's default
    shown = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section, value in shown.items():
        if isinstance(value, dict):
            for key, item in value.items():
                assert item == values[section][key], f"{section}.{key}"
        elif section != "input":
            assert value == values[section], section


def test_python_holds_no_literal_defaults():
    """`git grep` finds each default once: no DEFAULT_* tables and no patch-factor literal outside budget.py."""
    found = subprocess.run(
        ["git", "grep", "-n", "-E", r"^DEFAULT_[A-Z]+ = \{", "--", "vidcap"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    assert found == ""
    literals = subprocess.run(
        ["git", "grep", "-n", "-E", r"= 28\b|or 28\b", "--", "vidcap"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert [line for line in literals if not line.startswith("vidcap/budget.py")] == []


@pytest.mark.parametrize(
    "given, message",
    [
        ({"frames": {"fsp": 3}}, "unknown config key 'frames.fsp' (did you mean 'frames.fps'?)"),
        ({"modle": "x"}, "unknown config key 'modle' (did you mean 'model'?)"),
        ({"sampling": {"temprature": 0.1}}, "did you mean 'sampling.temperature'?"),
    ],
)
def test_misspelt_keys_name_the_nearest_valid_one(given, message):
    with pytest.raises(config.ConfigError) as error:
        config.check_keys(given)
    assert message in str(error.value)


def test_free_form_sections_accept_any_key():
    config.check_keys({"engine": {"env": {"ANY_NAME": "1"}, "vllm_args": {"async_scheduling": True}}})


def test_engine_limits_follow_the_frame_budget():
    whole = config.load(overrides={"input": "x.json"})
    engine = settings.caption_job(whole)["engine"]
    # 51200 - 2048 (caption) - 512 (prompt text) vision tokens, plus the prompt text
    assert engine["max_num_batched_tokens"] == 51200 - 2048 - 512 + 512
    small = config.load(overrides={"input": "x.json", "engine": {"max_num_batched_tokens": 8192}})
    with pytest.raises(config.ConfigError, match="at least 49152"):
        settings.caption_job(small)


def test_unknown_vllm_arg_is_refused_with_the_nearest():
    whole = config.load(overrides={"input": "x.json", "engine": {"vllm_args": {"max_num_seq": 8}}})
    with pytest.raises(config.ConfigError, match="did you mean 'max_num_seqs'"):
        settings.caption_job(whole)
    ok = config.load(overrides={"input": "x.json", "engine": {"vllm_args": {"quantization": "fp8"}}})
    assert settings.caption_job(ok)["engine"]["vllm_args"] == {"quantization": "fp8"}


def test_quality_settings_reach_the_caption_job_and_greedy_candidates_are_refused(tmp_path):
    job = settings.caption_job(config.load(overrides={"input": "x.json"}))
    assert job["candidates"] == {"n": 1, "keep": "first"} and job["quality"]["retries"] == 0
    assert job["output_format"] == "text" and job["output_schema"] is None
    (tmp_path / "answer.json").write_text('{"type": "object", "properties": {"summary": {"type": "string"}}}')
    structured = config.load(
        overrides={"input": "x.json", "output_format": "json", "output_schema": str(tmp_path / "answer.json")}
    )
    # the schema's content, not its path, is a caption param: editing the file reruns the caption jobs
    assert settings.caption_params(structured)["output_schema"]["properties"] == {
        "summary": {"type": "string"}
    }
    greedy = config.load(
        overrides={"input": "x.json", "sampling": {"temperature": 0}, "candidates": {"n": 3}}
    )
    with pytest.raises(config.ConfigError, match="candidates.n 3 needs sampling.temperature > 0"):
        settings.caption_job(greedy)
    missing = config.load(
        overrides={"input": "x.json", "output_format": "json", "output_schema": "nope.json"}
    )
    with pytest.raises(config.ConfigError, match="output_schema: .*nope.json"):
        settings.caption_job(missing)
