import functools
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The vidcap package sits at the repository root: importable here with or without `pip install -e .`;
# job scripts reach it through workflow/scripts/vidcap (a link), as conda envs do not install it.
# (two folders up from this file: workflow.basedir is the user's folder when vidcap runs as a module)
sys.path.insert(0, os.path.join(workflow.current_basedir, "..", ".."))

from vidcap import (
    object_storage,
    progress,
    provenance,
    records,
    settings,
    shard_lock,
    shards,
)
from vidcap.config import ConfigError, check_keys, check_values

# a misspelt key stops the run here, naming it and the nearest valid one (the schema's own error is vaguer)
try:
    check_keys(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None
validate(config, "../../config/schemas/config.schema.yaml")
try:  # values valid one by one but not together (e.g. long_video.min_window_frames > window_frames)
    check_values(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

RESULTS = config["results"].rstrip("/")
SHARD_DIR = f"{RESULTS}/shards"
SHARDS = shards.shard_ids(config["shards"])
try:  # engine limits that the frame budget needs: a too-small user value fails before any job
    CAPTION_JOB = settings.caption_job(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None


def stored(path):
    """A path, or a URL handed to Snakemake's storage plugin (docs/object-storage.md)."""
    return storage(path) if object_storage.is_url(path) else path


def local_input():
    """The records file; one on object storage is fetched first, as shards are made from it now."""
    if not (object_storage.is_url(config["input"]) and workflow.is_main_process):
        return config["input"]
    try:
        return object_storage.retrieve(storage(config["input"]))
    except FileNotFoundError:
        return config["input"]


INPUT = local_input()
OUTPUT = stored(config["output"])
PROVENANCE = stored(str(provenance.provenance_path(config["output"])))

# Shards are made while the workflow is parsed, not by a rule: a shard file is rewritten only when
# its records change, so Snakemake sees only those shards as new and reruns nothing else (a shard
# rule would rewrite, and so rerun, all of them). Validation here also stops a malformed input
# before any job. Jobs on cluster nodes re-parse this file and must not reshard, and no command may
# rewrite shards a running build reads: the process that syncs holds their lock while it lives.
if workflow.is_main_process:
    if os.path.exists(INPUT):
        LOOKING = shard_lock.only_looks(sys.argv, workflow.output_settings.dryrun)
        SHARD_LOCK = shard_lock.claim(SHARD_DIR, wait=0 if LOOKING else 60)
        if SHARD_LOCK is None and LOOKING:
            print(
                f"vidcap: {shard_lock.holder(SHARD_DIR)} is building {RESULTS}: its shards are shown "
                "as they are, not re-made from the input",
                file=sys.stderr,
            )
        elif SHARD_LOCK is None:
            raise WorkflowError(
                f"{shard_lock.holder(SHARD_DIR)} is building {RESULTS}; wait for it to end (or stop it) "
                "before starting another build on the same results"
            )
        else:
            try:
                shards.sync_shards(
                    INPUT,
                    SHARD_DIR,
                    config["shards"],
                    config["keys"],
                    media_root=settings.media_root(config),
                )
            except records.InputError as exc:
                raise WorkflowError(f"invalid input: {exc}") from None
    else:  # not fatal here, so --lint works without data; Snakemake then stops on the missing input
        print(
            f"vidcap: input file {config['input']!r} not found (set it with --config input=...)",
            file=sys.stderr,
        )


# A line of progress (records captioned/total, records/s, ETA; vidcap.progress) as caption jobs end and
# every minute, printed by a thread of this process; hooks run in the main process only, never in jobs.
PROGRESS_REPORTER = {}


onstart:
    PROGRESS_REPORTER["finish"] = progress.start_reporter(config)


onsuccess:
    PROGRESS_REPORTER.pop("finish", lambda **_: None)(ended=True)


onerror:
    PROGRESS_REPORTER.pop("finish", lambda **_: None)(ended=True)


def attempt_number(wildcards, attempt):
    """Snakemake's try number of the job (1, then 2... on retries): a script sees it only as a resource
    (snakemake.resources.attempt); the job appends each attempt to its log and times out by it.
    """
    return attempt


def frames_store():
    """With frames.keep false, a shard's frames live in a temp() folder of its own, removed once the
    shard is captioned (no sharing between shards); by default they live in the shared cache.
    """
    if config["frames"]["keep"]:
        return {}
    return {"frames": temp(directory(f"{RESULTS}/frames/{{shard}}.frames"))}


def frames_params_of(wildcards):
    return settings.frames_rule_params(config, wildcards.shard)


def merged_results():
    """What the merge reads per shard: the summaries (long videos' captions, derived caption-set entries),
    or with long_video.mode single and no derived entry the caption results, so that runs no summary job.
    """
    step = "summaries" if settings.needs_summary_step(config) else "captions"
    return f"{RESULTS}/{step}/{{shard}}.jsonl"


@functools.cache
def _staged_urls(shard):
    from vidcap.frames import (
        staged_urls,
    )  # numpy and the decoders: only for builds that stage media

    urls = staged_urls(
        f"{SHARD_DIR}/{shard}.jsonl", settings.frames_settings(config, shard)
    )
    return object_storage.existing(storage(urls))


def staged_urls_of(wildcards):
    return _staged_urls(wildcards.shard)


def staged_media(wildcards):
    return storage(_staged_urls(wildcards.shard))


def staging(**functions):
    """A shard's media on object storage, retrieved by Snakemake for its frames job (``functions``: the
    input or params that list them); nothing when media_root is a folder: local builds read no shard
    while the DAG is built, and pay for no input function per job.
    """
    return functions if object_storage.is_url(settings.media_root(config)) else {}


def transcripts_of_shard():
    """The caption job's transcript input: only with audio.mode transcript (else no ASR job runs at all)."""
    if settings.audio_mode(config) != "transcript":
        return {}
    return {"transcripts": f"{RESULTS}/transcripts/{{shard}}.jsonl"}
