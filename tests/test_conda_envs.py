"""`--sdm conda`: each env in envs/ lists every package the rules using it import.

The imports are derived, not listed by hand: for each rule, its `script:` adapter and every vidcap
module it reaches (transitively, function-level imports included: a job may take any branch), mapped
from import names to package names; modules that run ffmpeg or ffprobe need the ffmpeg package.
Conda channels cannot be reached from the test machines, so whether the envs solve and install is
not tested here (docs/install.md says so).
"""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

RULES = REPO / "workflow" / "rules"
# import name -> package name, where they differ
PACKAGE_OF = {"PIL": "pillow", "yaml": "pyyaml", "ffmpeg": "ffmpeg-python"}
# packages an env gets through another it lists, with why that is enough
PROVIDED_BY = {
    "torch": "vllm",  # vLLM pins the torch it was built against; a second pin could only conflict
    "transformers": "vllm",  # likewise pinned by vLLM
    "markupsafe": "jinja2",  # jinja2's own dependency, imported for its escape()
}
# imports a job survives without (guarded by try/except), and why
OPTIONAL = {
    # provenance records no hub revision without it; caption jobs, which look one up, get it with vLLM
    "huggingface_hub",
}
# a module that starts these programs needs the ffmpeg package (ffmpeg-python only wraps them)
PROGRAMS = re.compile(r"""\[\s*["'](?:ffmpeg|ffprobe)["']|ffmpeg\.input\(""")


def _rules() -> dict[str, dict[str, Path]]:
    """rule name -> its conda env and script, read from workflow/rules/*.smk."""
    found = {}
    for smk in sorted(RULES.glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(encoding="utf-8"), flags=re.M)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            paths = dict(re.findall(r"^    (conda|script):\s*\n\s+\"([^\"]+)\"", block, flags=re.M))
            found[name] = {key: (RULES / value).resolve() for key, value in paths.items()}
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "vidcap":  # from vidcap import provenance, settings
                names |= {f"vidcap.{alias.name}" for alias in node.names}
    return names


def _vidcap_module(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def needed_packages(script: Path) -> dict[str, set[str]]:
    """package -> the files that need it, for a job running ``script``."""
    needed: dict[str, set[str]] = {}
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        where = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
        if PROGRAMS.search(path.read_text(encoding="utf-8")):
            needed.setdefault("ffmpeg", set()).add(where)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "vidcap":
                module = _vidcap_module(name)
                todo += [module] if module else []
            elif top not in sys.stdlib_module_names and top not in OPTIONAL:
                needed.setdefault(PACKAGE_OF.get(top, top).lower(), set()).add(where)
    return needed


def env_packages(env: Path) -> set[str]:
    """Package names an env file lists, conda and pip, without versions."""
    deps = yaml.safe_load(env.read_text(encoding="utf-8"))["dependencies"]
    specs = [d for d in deps if isinstance(d, str)]
    specs += [p for d in deps if isinstance(d, dict) for p in d.get("pip", [])]
    return {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


RULE_ENVS = _rules()


def test_every_rule_with_a_script_names_a_conda_env():
    assert {"extract_frames", "caption_shard", "summarize_shard", "merge_captions", "build_report"} <= set(
        RULE_ENVS
    )
    for name, paths in RULE_ENVS.items():
        if "script" in paths:
            assert paths.get("conda", Path()).is_file(), f"rule {name} has no conda env file"


@pytest.mark.parametrize("rule", sorted(name for name, p in RULE_ENVS.items() if "script" in p))
def test_env_lists_every_package_its_rule_imports(rule):
    env = RULE_ENVS[rule]["conda"]
    listed = env_packages(env)
    needed = needed_packages(RULE_ENVS[rule]["script"])
    missing = {
        package: sorted(files)
        for package, files in needed.items()
        if package not in listed and PROVIDED_BY.get(package) not in listed
    }
    assert not missing, f"envs/{env.name} (rule {rule}) lacks {missing}"


def test_derivation_finds_what_a_caption_job_imports():
    """The walk reaches function-level imports and the modules behind `from vidcap import x`."""
    needed = needed_packages(REPO / "workflow" / "scripts" / "caption_shard.py")
    assert {"vllm", "ffmpeg-python", "av", "pillow", "numpy", "ffmpeg", "jsonschema"} <= set(needed)
    assert "vidcap/structured.py" in needed["jsonschema"]  # imported inside a function
    assert not {"os", "json", "vidcap", "huggingface_hub"} & set(needed)
