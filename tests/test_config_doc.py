"""config/README.md (the Workflow Catalog's configuration page) is written from the schema and current."""

import subprocess
import sys

from helpers import REPO

from vidcap import config, config_doc


def _keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, child in node.get("properties", {}).items():
        if child.get("type") == "object" and "properties" in child:
            keys += _keys(child, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_checked_in_config_readme_is_current():
    checked_in = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    assert checked_in == config_doc.render(), (
        "config/README.md is stale: run  python -m vidcap config-doc --output config/README.md"
    )


def test_every_schema_key_has_a_row_with_its_default():
    page = config_doc.render()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(_keys(config.schema()))
    assert "**required**" in rows["input"]
    assert "`8`" in rows["shards"] and '`"ffmpeg"`' in rows["frames.backend"]


def test_command_writes_the_page(tmp_path):
    out = tmp_path / "README.md"
    proc = subprocess.run(
        [sys.executable, "-m", "vidcap", "config-doc", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == config_doc.render()
