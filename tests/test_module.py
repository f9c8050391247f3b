"""vidcap used as a Snakemake module from another folder (docs/module.md): a workflow of the user's own
imports every vidcap rule by `module` + `use rule *` and builds the demo through it, with vidcap's
profile copied beside it as the docs say (Snakemake loads no profile of a module)."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from helpers import BIN, CAPTIONED, ONE_SHARD_JOBS, REPO, SNAKEMAKE, jobs_run

from vidcap.demo import make_demo

pytestmark = pytest.mark.slow

USER_SNAKEFILE = """\
configfile: "config/config.yaml"


module vidcap:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from vidcap
"""


def _snakemake(project, *args):
    return subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--nocolor", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
    )


def test_module_from_another_folder_builds_the_demo(tiny_model, tmp_path):
    project = tmp_path / "my project"
    make_demo(project / "demo")
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config.update(model=str(tiny_model), shards=1)  # one engine start
    (project / "config").mkdir()
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    shutil.copytree(REPO / "profiles" / "default", project / "profiles" / "default")
    (project / "Snakefile").write_text(
        USER_SNAKEFILE.format(snakefile=str(REPO / "workflow" / "Snakefile")), encoding="utf-8"
    )

    proc = _snakemake(project)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # the copied profile (retries, checksum limit, rerun-incomplete) and the workflow's own GPU limit
    assert "Using workflow specific profile profiles/default" in log
    assert re.search(r"Provided resources: .*gpu\W+1\b", log), log[:3000]
    assert jobs_run(log) == ONE_SHARD_JOBS  # the demo's one shard

    records = json.loads((project / "demo" / "captions.json").read_text(encoding="utf-8"))
    statuses = [r["caption_meta"]["status"] for r in records]
    assert len(records) == 7 and all(s in CAPTIONED for s in statuses[:6]) and statuses[6] == "error"
    provenance = json.loads((project / "demo" / "captions.json.provenance.json").read_text(encoding="utf-8"))
    assert provenance["prompts"]["prompt"] == "Please describe the video in detail."
    assert provenance["shards"] == 1
    assert (project / "demo" / "results" / "report" / "gallery.html").is_file()

    again = _snakemake(project, "--dry-run")
    assert again.returncode == 0 and jobs_run(again.stdout + again.stderr) == {}
    report = _snakemake(project, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    assert (project / "report.html").stat().st_size > 100_000
