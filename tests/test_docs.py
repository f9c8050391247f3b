"""The README and docs/ cannot rot: every shell block in them is run here, covered by a named test, or marked
as an example that needs a GPU or a cluster. The rules are in docs/testing.md ("Doc tests")."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").rglob("*.md"))]

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
EXAMPLE_REASONS = {"needs a GPU", "needs a cluster"}
# an unlabelled block whose lines start like these is shell, and must be labelled so it is checked too
LOOKS_LIKE_SHELL = re.compile(
    r"^\s*(\$ )?(\.venv/bin/|python3? |snakemake |bash |scripts/|[A-Z_]+=\S* |salloc |sbatch |cp |pip )"
)
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*(run by|example):\s*(.+?)\s*-->$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# what a doc sandbox links in from the repository (results, demo data and the venv are its own)
SANDBOX_ENTRIES = (".ci", "Snakefile", "workflow", "config", "profiles", "envs", "vidcap", "scripts", "bench")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: tuple[str, str] | None  # ("run by", "tests/x.py::test_y, ...") or ("example", "needs a GPU")

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def commands(self) -> str:
        """The block as a script; a console block keeps only its `$ ` lines."""
        if self.language != "console":
            return self.text
        return "".join(line[2:] + "\n" for line in self.text.splitlines() if line.startswith("$ "))


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group(1)
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        marker = MARKER.match(lines[i - 1].strip()) if i else None
        body = "".join(line + "\n" for line in lines[i + 1 : end])
        found = (marker.group(1), marker.group(2)) if marker else None
        blocks.append(Block(path, i + 1, opening.group(2).lower(), body, found))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]
SHELL_BLOCKS = [block for block in ALL_BLOCKS if block.is_shell]
RUN_HERE = [block for block in SHELL_BLOCKS if block.marker is None]


def named_test_exists(target: str) -> bool:
    """`tests/test_x.py::test_y` names a test function (module level or in a class); a plain path a file."""
    file, _, name = target.partition("::")
    path = REPO / file
    if not path.is_file():
        return False
    if not name:
        return True
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


def marker_problem(block: Block) -> str | None:
    kind, value = block.marker
    if kind == "example":
        return None if value in EXAMPLE_REASONS else f"unknown example reason {value!r}"
    missing = [t.strip() for t in value.split(",") if not named_test_exists(t.strip())]
    return f"no such test: {', '.join(missing)}" if missing else None


def test_every_shell_block_is_run_or_marked():
    assert SHELL_BLOCKS and RUN_HERE, "the doc blocks were not found"
    problems = []
    for block in ALL_BLOCKS:
        if not block.is_shell:
            if not block.language and any(LOOKS_LIKE_SHELL.match(line) for line in block.text.splitlines()):
                problems.append(f"{block.where}: shell commands in an unlabelled block: label it ```bash")
            continue
        if block.marker and (problem := marker_problem(block)):
            problems.append(f"{block.where}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_marker_checks_can_fail():
    fake = Block(README, 1, "bash", "true\n", ("run by", "tests/test_docs.py::no_such_test"))
    assert marker_problem(fake) == "no such test: tests/test_docs.py::no_such_test"
    assert marker_problem(Block(README, 1, "bash", "", ("example", "needs a TPU")))
    assert (
        marker_problem(
            Block(README, 1, "bash", "", ("run by", "tests/test_docs.py::test_demo_script, .ci/run"))
        )
        is None
    )
    assert marker_problem(Block(README, 1, "bash", "", ("example", "needs a GPU"))) is None


def test_readme_starts_with_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    first = next(block for block in fenced_blocks(README) if block.is_shell)
    commands = [line.split("#")[0].strip() for line in first.text.splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert re.search(r"^bash scripts/test\.sh$", (REPO / ".ci" / "run").read_text(encoding="utf-8"), re.M)
    assert "gibberish" in text  # the demo's random-weight captions say so
    assert len(text.splitlines()) <= 200, "the README is a short user guide: move details to docs/"


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(github_anchor(line.lstrip("#")))
    return found


def test_relative_links_point_at_files_and_headings():
    broken = []
    for path in DOCS:
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def make_sandbox(root: Path) -> Path:
    """The repository linked into `root`, with this venv as .venv (what the docs' commands call)."""
    for name in SANDBOX_ENTRIES:
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


def sandbox_env(root: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIDCAP_INSTALL_DRY_RUN": "1",  # an install in a doc block prints its plan only
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from vidcap.demo import make_demo

    root = make_sandbox(tmp_path_factory.mktemp("docs-sandbox"))
    records = make_demo(root)  # clips/ and records.json, one record with a missing video
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config = {**demo, "input": "my.json", "output": "my.captions.json", "results": "results"}
    return root, records.read_text(encoding="utf-8"), yaml.safe_dump(config)


@pytest.mark.parametrize("block", RUN_HERE, ids=[block.where for block in RUN_HERE])
def test_doc_block_runs(block, sandbox):
    root, records, config = sandbox
    (root / "my.json").write_text(records, encoding="utf-8")  # fresh before each block
    (root / "my.yaml").write_text(config, encoding="utf-8")
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.commands()],
        cwd=root,
        env=sandbox_env(root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, (
        f"{block.where} failed:\n{block.text}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )


@pytest.mark.slow
def test_demo_script(tmp_path):
    """`bash scripts/demo.sh` end to end (its install only planned: the venv is this one)."""
    root = make_sandbox(tmp_path)
    run = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=root,
        env=sandbox_env(root),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    records = json.loads((root / "demo" / "captions.json").read_text(encoding="utf-8"))
    statuses = [record["caption_meta"]["status"] for record in records]
    inputs = json.loads((root / "demo" / "records.json").read_text(encoding="utf-8"))
    assert len(records) == len(inputs) and statuses.count("error") == 1
    assert all(record["caption"] for record in records if record["caption_meta"]["status"] != "error")
    assert "gibberish by design" in run.stdout
    assert (root / "demo" / "report.html").is_file()
