"""The SLURM profile on a real single-node Slurm cluster, and the local default profile.

The slow tests start munged, slurmctld and slurmd from Debian's slurm-wlm/munge (tests/slurm/start-slurm.sh;
one node with a GPU gres backed by a stand-in char device) and run the workflow through
snakemake-executor-plugin-slurm with profiles/slurm, whose site-specific values (partitions, memory, time
limits) the test replaces with ones that fit the test node. Nothing is mocked: sbatch, squeue, scontrol and
scancel are Slurm's own, and the caption jobs run the tiny model in vLLM's CPU build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import BIN, CAPTIONED, REPO, SNAKEMAKE, make_video, tiny_config, write_records

SLURM_DIR = Path(__file__).resolve().parent / "slurm"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
DEFAULT_PROFILE = REPO / "profiles" / "default" / "config.yaml"
SITE_EXAMPLE = REPO / "profiles" / "site-example" / "config.yaml"
SLURM_BINARIES = (
    "munged",
    "munge",
    "unmunge",
    "slurmctld",
    "slurmd",
    "sinfo",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
)
MISSING = [name for name in SLURM_BINARIES if shutil.which(name) is None]
needs_slurm = pytest.mark.skipif(
    bool(MISSING),
    reason=f"Slurm binaries absent ({', '.join(MISSING)}): apt-get install slurm-wlm munge "
    "(scripts/install.sh --test does it)",
)

# The values of profiles/site-example, replaced by what fits the one test node: its partitions are
# `cpu` and `gpu` (tests/slurm/start-slurm.sh), it has nproc CPUs (>= 2) and one stand-in GPU.
TEST_SITE = {
    "default-resources": {"slurm_partition": "cpu", "mem_mb": 1000, "runtime": 10},
    "set-resources": {
        "caption_shard": {"slurm_partition": "gpu", "cpus_per_task": 2, "mem_mb": 6000, "runtime": 10},
        # its partition stays the profile's expression: `gpu` with a long video in the shard, else `cpu`
        "summarize_shard": {"cpus_per_task": 2, "mem_mb": 6000, "runtime": 10},
    },
}
# Faster polling than a real cluster wants: the plugin adds 10 s per idle status check on top of these.
TEST_SPEED = {
    "slurm-init-seconds-before-status-checks": 1,
    "seconds-between-status-checks": 1,
    "latency-wait": 5,
    "jobs": 2,
}
SNAKEMAKE_TIMEOUT = 240  # seconds; the Slurm run takes ~100 s on 2 busy cores
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def hard_timeout(seconds: int) -> list[str]:
    """A prefix that KILLs the command after `seconds`: a hung snakemake ignores SIGTERM."""
    return ["timeout", "-k", "10", "-s", "KILL", str(seconds)]


def as_root() -> list[str]:
    # the daemons and /etc/slurm need root; CI runners that are not root have passwordless sudo
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def run(cmd: list[str], seconds: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*hard_timeout(seconds), *cmd], capture_output=True, text=True, env=ENV, **kwargs)


def scontrol_job(job_id: str, details: bool = False) -> dict:
    """Slurm's own record of a job (kept for MinJobAge=600 s after it ends), as key -> value."""
    proc = run(["scontrol", *(["-d"] if details else []), "show", "job", "-o", job_id], 15, check=True)
    return dict(re.findall(r"(\S+?)=(\S*)", proc.stdout))


def slurm_jobs() -> list[dict]:
    """Every job the cluster knows: id, state and the plugin's comment (rule_<name>[_wildcards_<w>])."""
    proc = run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], 15, check=True)
    jobs = []
    for line in proc.stdout.splitlines():
        job_id, state, comment = line.strip().split("|", 2)
        jobs.append({"id": job_id, "state": state, "rule": re.sub(r"^rule_|_wildcards_.*$", "", comment)})
    return sorted(jobs, key=lambda job: int(job["id"]))


def gpus_requested(record: dict) -> int:
    """GPUs of a job from its TresPerJob (22.05: gres:gpu:N; newer Slurm: gres/gpu:N)."""
    match = re.search(r"gres[:/]gpu[:=](\d+)", record.get("TresPerJob", ""))
    return int(match.group(1)) if match else 0


def profile_for_test_node(base: Path) -> Path:
    """A site profile for the test node, as a user makes one from profiles/site-example: that file with its
    values replaced (no account: the test cluster keeps no accounting), in a folder of its own. It is
    layered over profiles/slurm (:func:`profile_args`), which the test uses unchanged."""
    profile = yaml.safe_load(SITE_EXAMPLE.read_text(encoding="utf-8"))
    del profile["default-resources"]["slurm_account"]
    for key, values in TEST_SITE.items():
        for name, value in values.items():
            assert name in profile[key], f"profiles/site-example has no {key}: {name} (the test overrides it)"
            if isinstance(value, dict):
                missing = set(value) - set(profile[key][name])
                assert not missing, f"profiles/site-example {key}: {name} lacks {missing}"
                profile[key][name] = {**profile[key][name], **value}
            else:
                profile[key][name] = value
    profile.update(TEST_SPEED)
    folder = base / "site-profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    return folder


def profile_args(site: Path) -> list[str]:
    """The project's Slurm profile with a site profile over it (the site wins key by key)."""
    return ["--profile", str(SLURM_PROFILE.parent), "--workflow-profile", str(site)]


def snakemake_cmd(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--nocolor",
        *args,
    ]


def make_dataset(workdir: Path, model: Path) -> Path:
    """Two short clips in one shard (every Slurm job costs ~10 s of nested snakemake start-up)."""
    records = []
    for i, source in enumerate(["testsrc2", "smptebars"]):
        make_video(workdir / f"clips/clip {i}.mp4", seconds=1.0, source=source)
        records.append(
            {"video": [f"clips/clip {i}.mp4"], "conversation": [{"from": "human", "value": ""}], "id": i}
        )
    write_records(workdir / "records.json", records)
    config = tiny_config(model, shards=1)  # greedy (temperature 0): a rerun anywhere gives the same text
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config), encoding="utf-8")
    return configfile


def cancel_first_caption_job(snakemake: subprocess.Popen, workdir: Path) -> tuple[str, dict, bool]:
    """scancel the first caption job once it is at work; leave a torn result file behind, as a writer killed
    mid-file would (vidcap writes atomically, so the test fakes it). Returns the job id, its scontrol record
    while it ran, and whether its result existed when it was cancelled."""
    result_path = workdir / "results" / "captions" / "0000.jsonl"
    caption_log = workdir / "results" / "logs" / "caption_shard" / "0000.log"
    while snakemake.poll() is None:
        time.sleep(0.5)
        running = [j for j in slurm_jobs() if j["rule"] == "caption_shard" and j["state"] == "RUNNING"]
        # at work once the rule has opened its log: the nested snakemake is up, vLLM is starting
        if running and caption_log.exists():
            job_id = running[0]["id"]
            record = scontrol_job(job_id, details=True)
            output_existed = result_path.exists()
            run(["scancel", job_id], 15, check=True)
            result_path.parent.mkdir(parents=True, exist_ok=True)
            result_path.write_text('{"digest": "torn", "capt', encoding="utf-8")
            return job_id, record, output_existed
    return "", {}, False


@pytest.fixture(scope="module")
def slurm_cluster():
    """A fresh single-node Slurm cluster, started and stopped by pid (tests/slurm/*.sh)."""
    state = Path(tempfile.mkdtemp(prefix="vcs", dir="/tmp"))  # short: the munge socket lives in it
    started = run([*as_root(), "bash", str(SLURM_DIR / "start-slurm.sh"), str(state)], 90)
    if started.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        pytest.fail(f"could not start Slurm (rc {started.returncode}):\n{started.stdout}\n{started.stderr}")
    try:
        yield state
    finally:
        stopped = run([*as_root(), "bash", str(SLURM_DIR / "stop-slurm.sh"), str(state)], 90)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@dataclass
class SlurmRun:
    workdir: Path
    configfile: Path
    profile: Path
    proc: subprocess.CompletedProcess
    seconds: float
    local_output: list
    jobs: list[dict] = field(default_factory=list)  # squeue rows + "record" (scontrol show job)
    cancelled_id: str = ""
    running_record: dict = field(default_factory=dict)  # scontrol -d of the caption job while it ran
    output_at_cancel: bool = False

    @property
    def log(self) -> str:
        return self.proc.stdout + self.proc.stderr


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tiny_model, tmp_path_factory) -> SlurmRun:
    """The workflow run locally (profiles/default) and through Slurm (profiles/slurm), on the same data.

    While the Slurm run goes, its first caption job is cancelled with scancel as soon as it has started
    work, and a torn half-written result is left where a non-atomic writer would have left one: the
    profile's `retries` must resubmit the job and Snakemake must not take the torn file as done.
    """
    base = tmp_path_factory.mktemp("slurm")
    local = base / "local"
    local.mkdir()
    local_config = make_dataset(local, tiny_model)
    # the local run relies on profiles/default (found next to the Snakefile) for cores and the gpu resource
    proc = run(snakemake_cmd(local, local_config), 300, cwd=local)
    assert proc.returncode == 0, f"local run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert f"Using workflow specific profile {REPO / 'profiles' / 'default'}" in proc.stderr
    assert re.search(r"^Provided resources: .*gpu", proc.stdout + proc.stderr, flags=re.M)
    local_output = json.loads((local / "captions.json").read_text(encoding="utf-8"))

    workdir = base / "cluster"
    workdir.mkdir()
    configfile = make_dataset(workdir, tiny_model)
    profile = profile_for_test_node(base)
    cmd = [
        *hard_timeout(SNAKEMAKE_TIMEOUT),
        *snakemake_cmd(workdir, configfile, *profile_args(profile)),
    ]
    out_path, err_path = base / "snakemake.out", base / "snakemake.err"
    started = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        snakemake = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=ENV, cwd=workdir)
        try:
            cancelled_id, running_record, output_at_cancel = cancel_first_caption_job(snakemake, workdir)
            snakemake.wait()
        finally:
            if snakemake.poll() is None:  # only if the test itself failed: timeout KILLs it anyway
                snakemake.kill()
                snakemake.wait()
    seconds = time.monotonic() - started
    proc = subprocess.CompletedProcess(cmd, snakemake.returncode, out_path.read_text(), err_path.read_text())
    jobs = slurm_jobs()
    for job in jobs:
        job["record"] = scontrol_job(job["id"])
    print(f"slurm run: {seconds:.1f} s, jobs: {[(j['id'], j['rule'], j['state']) for j in jobs]}")
    assert proc.returncode == 0, (
        f"slurm run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    )
    return SlurmRun(
        workdir,
        configfile,
        profile,
        proc,
        seconds,
        local_output,
        jobs,
        cancelled_id,
        running_record,
        output_at_cancel,
    )


# ---- the slow tests: real daemons ------------------------------------------------------------------------


@pytest.mark.slow
@needs_slurm
def test_caption_jobs_get_one_gpu_and_frames_jobs_cpus_only(slurm_run):
    by_rule = {}
    for job in slurm_run.jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    # merge_captions and build_report are local rules: only frames, caption and summary jobs reach Slurm
    assert set(by_rule) == {"extract_frames", "caption_shard", "summarize_shard"}, slurm_run.jobs
    # the site's values (partitions, memory) layered over the project's profile, which supplies the rest
    layered = f"Using profiles {SLURM_PROFILE.parent} and workflow specific profile {slurm_run.profile}"
    assert layered in slurm_run.log
    for job in by_rule["caption_shard"]:
        record = job["record"]
        assert gpus_requested(record) == 1, record  # resources gpu=1 -> sbatch --gpus=1
        assert record["Partition"] == "gpu" and record["NumCPUs"] == "2", record
    # no video is long: the summary jobs only copy lines, and ask for no GPU nor the GPU partition
    assert len(by_rule["summarize_shard"]) == 1  # one shard
    for job in by_rule["summarize_shard"]:
        record = job["record"]
        assert gpus_requested(record) == 0 and "gpu" not in record["TRES"], record
        assert record["Partition"] == "cpu" and job["state"] == "COMPLETED", record
    # while it ran, Slurm had allocated it the node's one GPU (gres index 0, the stand-in device)
    running = slurm_run.running_record
    assert running["JobState"] == "RUNNING" and running["JOB_GRES"] == "gpu:1", running
    assert re.fullmatch(r"gpu(:\w+)?:1\(IDX:0\)", running["GRES"]), running
    for rule in ("extract_frames",):
        for job in by_rule[rule]:
            record = job["record"]
            assert gpus_requested(record) == 0 and "gpu" not in record["TRES"], record
            assert record["Partition"] == "cpu" and job["state"] == "COMPLETED", record


@pytest.mark.slow
@needs_slurm
def test_slurm_output_equals_local_output(slurm_run):
    output = json.loads((slurm_run.workdir / "captions.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in output] == [0, 1]
    assert all(r["caption_meta"]["status"] in CAPTIONED for r in output), output
    assert output == slurm_run.local_output


@pytest.mark.slow
@needs_slurm
def test_cancelled_caption_job_is_retried_to_completion(slurm_run):
    caption = [job for job in slurm_run.jobs if job["rule"] == "caption_shard"]
    assert [job["state"] for job in caption] == ["CANCELLED", "COMPLETED"], caption
    assert caption[0]["id"] == slurm_run.cancelled_id
    assert not slurm_run.output_at_cancel  # cancelled while at work, before any result
    log = slurm_run.log
    assert f"SLURM-job '{slurm_run.cancelled_id}' failed, SLURM status is: 'CANCELLED'" in log
    assert "Trying to restart job" in log
    # the torn file left behind by the killed job was not taken as the shard's result: the retry ran and
    # replaced it (Snakemake removes a failed job's outputs, vidcap writes results atomically)
    lines = (slurm_run.workdir / "results/captions/0000.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all(json.loads(line)["caption"] for line in lines)
    assert [r["id"] for r in json.loads((slurm_run.workdir / "captions.json").read_text())] == [0, 1]
    # the retry appended to the cancelled attempt's log (a header each) instead of overwriting it
    caption_log = (slurm_run.workdir / "results/logs/caption_shard/0000.log").read_text(encoding="utf-8")
    assert caption_log.index("=== attempt 1,") < caption_log.index("=== attempt 2,"), caption_log


@pytest.mark.slow
@needs_slurm
def test_tensor_parallel_2_asks_slurm_for_two_gpus(slurm_run, tmp_path):
    """tensor_parallel_size drives the GPU request: Slurm itself rejects 2 GPUs on the 1-GPU test node."""
    work = tmp_path / "tp2"
    shutil.copytree(slurm_run.workdir, work, symlinks=True)
    config = yaml.safe_load(slurm_run.configfile.read_text(encoding="utf-8"))
    config["engine"]["tensor_parallel_size"] = 2
    configfile = work / "config.yaml"
    configfile.write_text(yaml.safe_dump(config), encoding="utf-8")
    target = "results/captions/0000.jsonl"
    proc = run(
        snakemake_cmd(
            work,
            configfile,
            *profile_args(slurm_run.profile),
            "--retries",
            "0",
            "--forcerun",
            "caption_shard",
            target,
        ),
        120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "SLURM sbatch failed" in log and "Requested node configuration is not available" in log, log
    assert re.search(r"sbatch .*--comment rule_caption_shard_wildcards_0000 .*-p gpu .*--gpus=2\b", log), log


# ---- fast: profiles parsed by Snakemake, no daemons --------------------------------------------------------


def dry_run_resources(workdir: Path, config: dict, *args: str) -> tuple[str, dict]:
    """Run `snakemake --dry-run` and return its log and the resources it planned per rule."""
    write_records(workdir / "records.json", [{"video": ["a.mp4"]}, {"video": ["b.mp4"]}])
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = run(snakemake_cmd(workdir, configfile, "--dry-run", *args), 120, cwd=workdir)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    resources = {}
    job_block = r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$"
    for rule, line in re.findall(job_block, log, flags=re.M):
        resources[rule] = dict(item.split("=", 1) for item in line.split(", "))
    return log, resources


def test_local_run_loads_default_profile(tmp_path):
    log, _ = dry_run_resources(tmp_path, tiny_config("model"))
    assert f"Using workflow specific profile {REPO / 'profiles' / 'default'}" in log
    profile = yaml.safe_load(DEFAULT_PROFILE.read_text(encoding="utf-8"))
    # the local GPU limit is the workflow's own (vidcap.gpus.default_gpu_resource), so modules keep it too
    assert "resources" not in profile and "executor" not in profile
    assert profile["retries"] == 1 and profile["rerun-incomplete"] is True


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_slurm_profile_plans_gpus_from_tensor_parallel_size(tmp_path, tensor_parallel_size):
    config = tiny_config("model", engine={"tensor_parallel_size": tensor_parallel_size})
    log, resources = dry_run_resources(tmp_path, config, "--workflow-profile", str(SLURM_PROFILE.parent))
    assert f"Using workflow specific profile {SLURM_PROFILE.parent}" in log
    assert "profiles/default" not in log  # --workflow-profile replaces it
    caption = resources["caption_shard"]
    assert caption["gpu"] == str(tensor_parallel_size) and caption["slurm_partition"] == "gpu", caption
    frames = resources["extract_frames"]
    assert "gpu" not in frames and frames["slurm_partition"] == "cpu", frames
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["retries"] >= 1
    assert not any(key in rule for rule in profile["set-resources"].values() for key in ("gpu", "gpus"))


def test_a_site_profile_layers_over_the_project_profile(tmp_path):
    """Partitions, account and memory from a profile outside the repository; the rest from profiles/slurm."""
    site = yaml.safe_load(SITE_EXAMPLE.read_text(encoding="utf-8"))
    site["default-resources"].update(slurm_partition="standard", slurm_account="proj42", mem_mb=4000)
    site["set-resources"]["caption_shard"]["slurm_partition"] = "a100"
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(site), encoding="utf-8")
    log, resources = dry_run_resources(tmp_path, tiny_config("model"), *profile_args(folder))
    layered = f"Using profiles {SLURM_PROFILE.parent} and workflow specific profile {folder} for setting"
    assert layered in log and "profiles/default" not in log, log
    frames, caption = resources["extract_frames"], resources["caption_shard"]
    assert frames["slurm_partition"] == "standard" and frames["slurm_account"] == "proj42", frames
    assert frames["mem_mb"] == "4000", frames
    assert caption["slurm_partition"] == "a100" and caption["gpu"] == "1", caption
    # both profiles name the same rules and resources: the example is complete
    project = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    assert set(site["set-resources"]) == set(project["set-resources"])
    for rule, values in project["set-resources"].items():
        assert set(values) == set(site["set-resources"][rule]), rule
    assert set(project["default-resources"]) | {"slurm_account"} == set(site["default-resources"])
