# vidcap's workflow lives in workflow/Snakefile (the layout the Snakemake Workflow Catalog expects); this
# file keeps `snakemake` in the repository root working, with profiles/default beside it loaded as before.
include: "workflow/Snakefile"
