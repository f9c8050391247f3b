# Adapter: Snakemake rule extract_frames -> vidcap.frames.extract_shard
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.frames import extract_shard  # noqa: E402
from vidcap.joblog import job_log  # noqa: E402

with job_log(snakemake.log[0]) as log:  # noqa: F821
    extract_shard(snakemake.input.shard, snakemake.output.manifest, snakemake.params.settings,  # noqa: F821
                  threads=snakemake.threads, log=log)  # noqa: F821
