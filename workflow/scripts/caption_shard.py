# Adapter: Snakemake rule caption_shard -> vidcap.caption.caption_shard
from vidcap.caption import caption_shard
from vidcap.joblog import job_log
from vidcap.settings import caption_job

with job_log(snakemake.log[0]) as log:
    caption_shard(
        snakemake.input.shard,
        snakemake.input.manifest,
        snakemake.output.result,
        caption_job(snakemake.config, snakemake.wildcards.shard),
        log=log,
    )
