# Adapter: Snakemake rule merge_captions -> vidcap.merge.merge_captions
import os

from vidcap.frames import disk_usage
from vidcap.joblog import job_log
from vidcap.merge import merge_captions
from vidcap.provenance import run_prompts, write_provenance

with job_log(snakemake.log[0], snakemake.resources.attempt) as log:
    merge_captions(
        os.path.dirname(snakemake.input.index),
        list(snakemake.input.results),
        snakemake.output.captions,
        snakemake.params.settings,
        log=log,
    )
    write_provenance(
        list(snakemake.input.stats),
        snakemake.output.provenance,
        # the output named as the config gives it: the URL of an output on object storage
        extra={"output": snakemake.config["output"], "prompts": run_prompts(snakemake.config)},
    )
    files, size = disk_usage(snakemake.params.frames_dir)
    where = snakemake.params.frames_dir
    print(f"frame cache: {files} files, {size / 2**20:.1f} MiB in {where}", file=log)
    store_files, store_size = disk_usage(snakemake.params.store_dir)
    print(
        f"result store: {store_files} files, {store_size / 2**20:.1f} MiB in {snakemake.params.store_dir}",
        file=log,
    )
