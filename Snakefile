# vidcap: caption a video dataset with a vision-language model.
#   snakemake --cores 8 --resources gpu=1 --config input=my.json
import os

from snakemake.utils import min_version

min_version("9.0")


# defaults beside this file, so `--directory` and `--configfile` work from anywhere
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/caption.smk"
include: "workflow/rules/merge.smk"


rule all:
    input:
        config["output"],
    default_target: True
