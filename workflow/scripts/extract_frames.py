# Adapter: Snakemake rule extract_frames -> vidcap.frames.extract_frames
from vidcap.frames import extract_frames
from vidcap.joblog import job_log

with job_log(snakemake.log[0], snakemake.resources.attempt) as log:
    extract_frames(
        snakemake.input.shard,
        snakemake.output.manifest,
        snakemake.params.settings,
        threads=snakemake.threads,
        log=log,
        attempt=snakemake.resources.attempt,
        run=snakemake.config["frames"],
        # the URLs of the shard's media on object storage, each with its local copy
        staged=dict(zip(snakemake.params.get("staged", []), snakemake.input.get("media", []))),
    )
