# vidcap's workflow lives in workflow/Snakefile (the layout the Snakemake Workflow Catalog expects); this
# file keeps `snakemake` in the repository root working, with profiles/default beside it loaded as before.
include: "workflow/Snakefile"


# an include leaves the including file's default target unset (Snakemake restores it after the include):
# name the workflow's, so a bare `snakemake` here builds what it builds in workflow/Snakefile
workflow.default_target = "all"
