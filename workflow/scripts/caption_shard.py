# Adapter: Snakemake rule caption_shard -> vidcap.caption.caption_shard
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.caption import caption_shard  # noqa: E402

with open(snakemake.log[0], "w", buffering=1) as log:  # noqa: F821
    sys.stdout = sys.stderr = log  # engine and library chatter goes to the job's log
    settings = dict(snakemake.params.settings, engine=snakemake.config["engine"])  # noqa: F821
    caption_shard(snakemake.input.shard, snakemake.input.manifest, snakemake.output.result,  # noqa: F821
                  settings, log=log)
