"""What the ecosystem expects of the repository: a licence matching pyproject, the Snakemake Workflow
Catalog's standardized layout (workflow/Snakefile, config/README.md, .snakemake-workflow-catalog.yml),
and a root Snakefile that still runs the same workflow."""

import re
import tomllib

import yaml
from helpers import REPO, jobs_run, run_snakemake, tiny_config, write_records


def test_license_file_is_the_apache_2_text_pyproject_names():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    # the whole text, not a stub: all nine sections and the end of the terms
    for section in range(1, 10):
        assert re.search(rf"^\s*{section}\. \w", text, flags=re.M), section
    assert "END OF TERMS AND CONDITIONS" in text


def test_catalog_file_declares_usage():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text(encoding="utf-8"))["usage"]
    assert usage["mandatory-flags"]["flags"] == "--config input=records.json"
    assert usage["mandatory-flags"]["desc"]
    assert usage["software-stack-deployment"] == {"conda": True, "apptainer": False, "apptainer+conda": False}
    assert usage["report"] is True


def test_catalog_layout_with_the_root_snakefile_as_an_include():
    assert (REPO / "workflow" / "Snakefile").is_file() and (REPO / "config" / "README.md").is_file()
    statements = [
        line
        for line in (REPO / "Snakefile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert statements == ['include: "workflow/Snakefile"', 'workflow.default_target = "all"']


def test_root_snakefile_plans_what_the_workflow_snakefile_plans(tmp_path):
    """A dry run (no job starts) through either entry point plans the same jobs, `all` included."""
    write_records(tmp_path / "records.json", [{"video": ["a.mp4"]}, {"video": ["b.mp4"]}])
    planned = {}
    for entry in ("Snakefile", "workflow/Snakefile"):
        work = tmp_path / entry.replace("/", "-")
        work.mkdir()
        config = tiny_config("model", input=str(tmp_path / "records.json"))
        proc = run_snakemake(work, config, "--dry-run", snakefile=REPO / entry)
        planned[entry] = jobs_run(proc.stdout + proc.stderr)
    assert planned["Snakefile"] == planned["workflow/Snakefile"]
    assert planned["Snakefile"]["all"] == 1 and planned["Snakefile"]["caption_shard"] == 2
