# Adapter: Snakemake rule caption_shard -> vidcap.caption.caption_shard
from vidcap.caption import caption_shard
from vidcap.joblog import job_log
from vidcap.settings import caption_job

settings = caption_job(snakemake.config, snakemake.wildcards.shard)
settings["frames_step"]["attempt"] = (
    snakemake.resources.attempt
)  # a re-extraction's timeout: the node's on try 1
with job_log(snakemake.log[0]) as log:
    caption_shard(snakemake.input.shard, snakemake.input.manifest, snakemake.output.result, settings, log=log)
