import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# the vidcap package sits at the repository root; importable with or without `pip install -e .`
sys.path.insert(0, workflow.basedir)

from vidcap import budget, provenance, records, shards  # noqa: E402


validate(config, "../../config/schemas/config.schema.yaml")

RESULTS = config["results"].rstrip("/")
SHARD_DIR = f"{RESULTS}/shards"
SHARDS = shards.shard_ids(config["shards"])
# kept relative when relative: a moved or copied project directory rebuilds nothing
MEDIA_ROOT = config["media_root"] or os.path.dirname(config["input"]) or "."

# Shards are made while the workflow is parsed, not by a rule: a shard file is rewritten only when
# its records change, so Snakemake sees only those shards as new and reruns nothing else (a shard
# rule would rewrite, and so rerun, all of them). Validation here also stops a malformed input
# before any job. Jobs on cluster nodes re-parse this file and must not reshard.
if workflow.is_main_process:
    if os.path.exists(config["input"]):
        try:
            shards.sync_shards(config["input"], SHARD_DIR, config["shards"], config["keys"])
        except records.InputError as exc:
            raise WorkflowError(f"invalid input: {exc}") from None
    else:  # not fatal here, so --lint works without data; Snakemake then stops on the missing input
        print(f"vidcap: input file {config['input']!r} not found (set it with --config input=...)",
              file=sys.stderr)


def frames_store():
    """With frames.keep false, a shard's frames live in a temp() folder of its own, removed once the
    shard is captioned (no sharing between shards); by default they live in the shared cache."""
    if config["frames"]["keep"]:
        return {}
    return {"frames": temp(directory(f"{RESULTS}/frames/{{shard}}.frames"))}


def frames_settings(shard):
    """What the frames step's output depends on (changing it re-extracts)."""
    keep = config["frames"]["keep"]
    return {
        "media_root": MEDIA_ROOT,
        "keys": config["keys"],
        "frames": frame_params(),
        "cache_dir": f"{RESULTS}/frames/cache" if keep else f"{RESULTS}/frames/{shard}.frames",
    }


def frame_params():
    """Frame settings, with each video's vision-token budget: the context left for the video."""
    params = {k: v for k, v in config["frames"].items() if k not in ("threads", "prompt_tokens", "keep")}
    if params.get("max_vision_tokens") is None:
        left = config["engine"]["max_model_len"] - config["sampling"]["max_tokens"]
        params["max_vision_tokens"] = max(left - config["frames"].get("prompt_tokens", 512), 1)
    if params.get("patch_factor") is None:
        params["patch_factor"] = budget.patch_factor_for(config["model"])
    return params


def caption_settings():
    """What a caption depends on; engine sizing is read from config inside the job instead."""
    return {
        "model": config["model"],
        "prompt": config["prompt"],
        "system_prompt": config["system_prompt"],
        "keys": config["keys"],
        "sampling": config["sampling"],
        "max_model_len": config["engine"]["max_model_len"],
    }


def merge_settings():
    return {
        "shards": config["shards"],
        "prompt": config["prompt"],
        "keys": config["keys"],
        "output_style": config["output_style"],
    }
