"""One minimum Python, stated alike wherever a user or a tool reads it: pyproject (pip refuses older),
scripts/install.sh (explains what to do on an older machine), the style gate's vermin target, the conda
envs, and the README and docs (the phrase README_PHRASE)."""

import re
import subprocess
import sys
import tomllib

from helpers import REPO

MINIMUM = "3.11"  # Snakemake 9.27 and vLLM 0.32 need it; vidcap uses typing.Self
README_PHRASE = f"Python {MINIMUM}+"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_pyproject_requires_the_minimum():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == f">={MINIMUM}"


def test_install_script_checks_the_minimum():
    script = (REPO / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert re.findall(r"^MIN_PYTHON=(\S+)$", script, flags=re.M) == [MINIMUM]


def test_style_gate_checks_code_against_the_minimum():
    gate = (REPO / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert re.findall(r"vermin --target=(\S+)", gate) == [f"{MINIMUM}-"]


def test_conda_envs_are_not_older_than_the_minimum():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        pins = re.findall(r"^\s*-\s*python\s*[=>]=?\s*([\d.]+)", env.read_text(encoding="utf-8"), flags=re.M)
        assert pins, f"{env.name} pins no python"
        assert all(_version(pin) >= _version(MINIMUM) for pin in pins), (env.name, pins)


def test_readme_and_docs_state_the_same_minimum():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert README_PHRASE in readme, f"README.md must say {README_PHRASE!r}"
    # any other "Python 3.N+" / "Python >= 3.N" claim in the user docs must name the same minimum
    claim = re.compile(r"Python\s*(?:>=|≥)\s*(3\.\d+)|Python\s+(3\.\d+)\+")
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for match in claim.finditer(doc.read_text(encoding="utf-8")):
            assert (match.group(1) or match.group(2)) == MINIMUM, (doc.name, match.group(0))


def test_tests_run_on_a_supported_python():
    assert sys.version_info[:2] >= _version(MINIMUM)


def test_install_script_explains_what_to_do_without_a_new_enough_python(tmp_path):
    # /bin/false stands for an interpreter that cannot run the check (the message is the same branch
    # as for an old one); the dry run stops before anything is installed
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false", "VIDCAP_INSTALL_DRY_RUN": "1"},
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"vidcap needs Python {MINIMUM} or newer" in proc.stderr
    for way in ("deadsnakes", f"uv python install {MINIMUM}", f"python={MINIMUM}"):
        assert way in proc.stderr
    assert "would pip install" not in proc.stdout
