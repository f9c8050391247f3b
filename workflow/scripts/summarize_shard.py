# Adapter: Snakemake rule summarize_shard -> vidcap.summary.summarize_shard
from vidcap.joblog import job_log
from vidcap.settings import summary_job
from vidcap.summary import summarize_shard

with job_log(snakemake.log.main, snakemake.resources.attempt, chatter=snakemake.log.engine) as log:
    summarize_shard(
        snakemake.input.captions,
        snakemake.output.summaries,
        summary_job(snakemake.config),
        log=log,
        shard_path=snakemake.input.shard,
    )
