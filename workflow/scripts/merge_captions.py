# Adapter: Snakemake rule merge_captions -> vidcap.merge.merge_results
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.joblog import job_log  # noqa: E402
from vidcap.merge import merge_results  # noqa: E402

with job_log(snakemake.log[0]) as log:  # noqa: F821
    merge_results(snakemake.input.records, list(snakemake.input.results), snakemake.output.captions,  # noqa: F821
                  snakemake.params.settings, log=log)  # noqa: F821
