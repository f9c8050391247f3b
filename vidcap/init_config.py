"""``python -m vidcap init DIR``: a commented starter config for the user's own data.

It names the input (absolute: the build may run from anywhere), the model, and a shard count from the
number of records and the rule in vidcap.sizing; every other value shown is the schema's default, so the
file only says where to start, never anything the schema does not.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidcap import config
from vidcap.records import iter_records
from vidcap.sizing import DEFAULT_RATE, JOB_MINUTES, MIN_RECORDS_PER_SHARD, SHARDS_PER_GPU, suggest_shards

CONFIG_NAME = "config.yaml"


def count_records(input_path: str, keys: dict | None = None) -> int:
    """Records of the input, checked as the build will (a malformed file fails here, not in a job)."""
    return sum(1 for _ in iter_records(input_path, keys))


def starter_config(
    input_path: str | None, model: str | None, records: int | None, gpus: int = 1, rate: float = DEFAULT_RATE
) -> str:
    """The commented YAML text of a starter config (``rate``: records/s per GPU, from a pilot build)."""
    values = config.defaults()
    shards = suggest_shards(records, gpus, rate) if records is not None else values["shards"]
    if records is None:
        count = "Record count unknown (no --input): the schema's default shard count"
    else:
        count = f"{records} records, {gpus} GPU(s), {rate:g} records/s per GPU: ~{-(-records // shards)} per shard"
    text = TEMPLATE.format(
        input=_yaml_scalar(input_path or "records.json"),
        model=_yaml_scalar(model or values["model"]),
        shards=shards,
        count=count,
        job_minutes=JOB_MINUTES,
        min_records=MIN_RECORDS_PER_SHARD,
        per_gpu=SHARDS_PER_GPU,
        prompt=_yaml_scalar(values["prompt"]),
        fps=values["frames"]["fps"],
        max_frames=values["frames"]["max_frames"],
        max_tokens=values["sampling"]["max_tokens"],
        temperature=values["sampling"]["temperature"],
        tp=values["engine"]["tensor_parallel_size"],
        max_model_len=values["engine"]["max_model_len"],
    )
    config.load(None, _parse(text))  # what init writes must be a valid config
    return text


def write_starter_config(
    folder: str,
    input_path: str | None,
    model: str | None,
    gpus: int = 1,
    rate: float = DEFAULT_RATE,
    force: bool = False,
) -> str:
    """Write ``folder/config.yaml``; return what to tell the user (where it is and what to run next)."""
    if gpus < 1 or not rate > 0:
        raise config.ConfigError(f"--gpus {gpus} --rate {rate}: need at least 1 GPU and a rate above 0")
    target = Path(folder) / CONFIG_NAME
    if target.exists() and not force:
        raise FileExistsError(17, "already exists (--force replaces it)", str(target))
    records = None
    if input_path is not None:
        input_path = os.path.abspath(input_path)
        records = count_records(input_path)
    text = starter_config(input_path, model, records, gpus, rate)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    shards = _parse(text)["shards"]
    return "\n".join(
        [
            f"wrote {target} ({f'{records} records, ' if records is not None else ''}shards: {shards})",
            "next (from the vidcap checkout; docs/sizing.md explains the shard count):",
            f"  snakemake -n --directory {folder} --configfile {target}          # dry run: jobs planned",
            f"  snakemake --cores all --resources gpu={gpus} --directory {folder} --configfile {target}",
            f"  python -m vidcap status --directory {folder} --configfile {target}   # progress, ETA",
        ]
    )


def _parse(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def _yaml_scalar(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML string, whatever it holds


TEMPLATE = """\
# vidcap starter config, written by `python -m vidcap init`. Every key is described, with its default,
# in config/schemas/config.schema.yaml; keys left out keep their defaults. Paths other than `input`
# are relative to the build's working directory (snakemake --directory).

# your records: a .json array or .jsonl, each with video/image paths (and a conversation, optional)
input: {input}
# the captioned records: .jsonl writes JSONL, anything else a JSON array
output: captions.json
# shards, frame cache, per-shard captions, logs and the result store
results: results

# {count}.
# Rule (docs/sizing.md): caption jobs of ~{job_minutes} min at the measured rate (`vidcap status` of a pilot
# build prints records/s), at least {min_records} records per shard, and at least {per_gpu} shards per GPU
# when the records allow. Changing it later reshards; the result store keeps every caption made.
shards: {shards}

model: {model}
prompt: {prompt}

frames:
  # frames per second sampled; lowered per video when the token budget needs it
  fps: {fps}
  max_frames: {max_frames}

sampling:
  temperature: {temperature}
  # longer captions end with status "truncated"
  max_tokens: {max_tokens}

engine:
  # GPUs per caption job (1 for 7B models: one engine per GPU is faster than tensor parallel)
  tensor_parallel_size: {tp}
  # prompt (text + vision tokens) + caption, in tokens
  max_model_len: {max_model_len}
"""
