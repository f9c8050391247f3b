# Adapter: Snakemake rule transcribe_shard -> vidcap.transcribe.transcribe_shard
from vidcap.joblog import job_log
from vidcap.settings import asr_job
from vidcap.transcribe import transcribe_shard

with job_log(snakemake.log.main, snakemake.resources.attempt, chatter=snakemake.log.engine) as log:
    transcribe_shard(snakemake.input.shard, snakemake.output.result, asr_job(snakemake.config), log=log)
