# Adapter: Snakemake rule extract_frames -> vidcap.frames.extract_frames
from vidcap.frames import extract_frames
from vidcap.joblog import job_log
from vidcap.settings import frames_settings

with job_log(snakemake.log[0]) as log:
    extract_frames(
        snakemake.input.shard,
        snakemake.output.manifest,
        frames_settings(snakemake.config, snakemake.wildcards.shard),
        threads=snakemake.threads,
        log=log,
        attempt=snakemake.resources.attempt,
    )
