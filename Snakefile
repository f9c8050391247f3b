# vidcap: caption a video dataset with a vision-language model.
#   snakemake --cores 8 --resources gpu=1 --config input=my.json
# Shards are written while this file is parsed (workflow/rules/common.smk), not by a rule: only shards
# whose records changed get new files, so an edit reruns only its shard's jobs, not every shard's.
import os

from snakemake.utils import min_version

min_version("9.20")


# defaults beside this file, so `--directory` and `--configfile` work from anywhere
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


wildcard_constraints:
    shard=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/caption.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        OUTPUT,
        # built with every run, so `snakemake --report report.html` can embed them
        rules.build_report.output,
