# Adapter: Snakemake rule build_report -> vidcap.report.build_report
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.joblog import job_log  # noqa: E402
from vidcap.report import build_report  # noqa: E402

with job_log(snakemake.log[0]) as log:  # noqa: F821
    files = {
        "manifests": list(snakemake.input.manifests),  # noqa: F821
        "caption_stats": list(snakemake.params.caption_stats),  # noqa: F821
        "benchmarks": list(snakemake.params.benchmarks),  # noqa: F821
    }
    build_report(snakemake.input.records, snakemake.input.captions, files,  # noqa: F821
                 dict(snakemake.output.items()), snakemake.params.settings, log=log)  # noqa: F821
