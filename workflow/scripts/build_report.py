# Adapter: Snakemake rule build_report -> vidcap.report.build_report
import os

from vidcap.joblog import job_log
from vidcap.report import build_report

with job_log(snakemake.log[0], snakemake.resources.attempt) as log:
    files = {
        "manifests": list(snakemake.input.manifests),
        "caption_stats": list(snakemake.params.caption_stats),
        "benchmarks": list(snakemake.params.benchmarks),
    }
    build_report(
        os.path.dirname(snakemake.input.index),
        snakemake.input.captions,
        files,
        dict(snakemake.output.items()),
        snakemake.params.settings,
        log=log,
    )
