# Adapter: Snakemake rule merge_captions -> vidcap.merge.merge_results
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821
from vidcap.frames import disk_usage  # noqa: E402
from vidcap.joblog import job_log  # noqa: E402
from vidcap.merge import merge_results  # noqa: E402
from vidcap.provenance import write_provenance  # noqa: E402

with job_log(snakemake.log[0]) as log:  # noqa: F821
    merge_results(snakemake.input.records, list(snakemake.input.results), snakemake.output.captions,  # noqa: F821
                  snakemake.params.settings, log=log)  # noqa: F821
    write_provenance(list(snakemake.input.stats), snakemake.output.provenance,  # noqa: F821
                     extra={"output": snakemake.output.captions})  # noqa: F821
    files, size = disk_usage(snakemake.params.frames_dir)  # noqa: F821
    print(f"frame cache: {files} files, {size / 2**20:.1f} MiB in {snakemake.params.frames_dir}", file=log)  # noqa: F821
