# Adapter: Snakemake rule caption_shard -> vidcap.caption.caption_shard
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.caption import caption_shard  # noqa: E402
from vidcap.joblog import job_log  # noqa: E402

with job_log(snakemake.log[0]) as log:  # noqa: F821
    # engine sizing and frame parameters come from config (provenance), not params (no reruns on sizing)
    settings = dict(snakemake.params.settings, engine=snakemake.config["engine"],  # noqa: F821
                    frames=snakemake.config["frames"])  # noqa: F821
    caption_shard(snakemake.input.shard, snakemake.input.manifest, snakemake.output.result,  # noqa: F821
                  settings, log=log)
