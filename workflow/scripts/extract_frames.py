# Adapter: Snakemake rule extract_frames -> vidcap.frames.extract_shard
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.frames import extract_shard  # noqa: E402

with open(snakemake.log[0], "w", buffering=1) as log:  # noqa: F821
    sys.stdout = sys.stderr = log  # engine and library chatter goes to the job's log
    extract_shard(snakemake.input.shard, snakemake.output.manifest, snakemake.params.settings,  # noqa: F821
                  threads=snakemake.threads, log=log)  # noqa: F821
