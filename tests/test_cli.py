"""The command line a new user meets: init, --version, status, and one-line errors (exit 2) for files
that are missing or malformed, misspelt or dotted config keys, and the wrong build's config."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vidcap import config
from vidcap.__main__ import main
from vidcap.atomic import write_json
from vidcap.demo import make_demo
from vidcap.frames import media_label
from vidcap.joblog import job_log, kept_log
from vidcap.progress import JobProgress, build_progress, format_progress, progress_path
from vidcap.shards import shard_ids, sync_shards
from vidcap.sizing import suggest_shards

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """The real entry point in a child process: what a user sees on the terminal, tracebacks included."""
    return subprocess.run([sys.executable, "-m", "vidcap", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "not-json.json").write_text("not json", encoding="utf-8")
    (folder / "object.json").write_text('{"a": 1}', encoding="utf-8")
    (folder / "numbers.json").write_text("[1, 2]", encoding="utf-8")
    (folder / "truncated.json").write_text('[{"caption": "a"}, {"capt', encoding="utf-8")
    (folder / "bad.jsonl").write_text('{"caption": "a"}\nnot json\n', encoding="utf-8")
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    (folder / "folder.json").mkdir()
    return folder


CASES = {
    "missing.json": "No such file or directory",
    "not-json.json": "expected a JSON array of records",
    "object.json": "found a JSON object",
    "numbers.json": "record 0 is a int, not an object",
    "truncated.json": "truncated",
    "bad.jsonl": "record 1 (line 2): invalid JSON",
    "binary.json": "expected a JSON array",
    "folder.json": "Is a directory",
}


@pytest.mark.parametrize("command", ["stats", "audit", "diff", "errors"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_missing_or_malformed_file_is_one_line_and_exit_2(bad_files, command, name, capsys):
    path = str(bad_files / name)
    args = {"diff": [path, path], "errors": [path, "--config", f"output={path}"]}.get(command, [path])
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vidcap {command}: ") and len(err.splitlines()) == 1, err
    assert CASES[name] in err and name in err, err


def test_the_entry_point_prints_no_traceback(bad_files):
    assert_one_line_error(run_cli("stats", str(bad_files / "missing.json")), "vidcap stats: ", "missing.json")
    assert_one_line_error(run_cli("audit", str(bad_files / "numbers.json")), "not a vidcap output file")


def test_retry_and_status_refuse_a_missing_or_malformed_config(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("shards: [1\n", encoding="utf-8")
    for command in ("retry", "status", "errors"):
        assert main([command, "--configfile", str(tmp_path / "none.yaml")]) == 2
        assert "none.yaml: No such file or directory" in capsys.readouterr().err
        assert main([command, "--configfile", str(tmp_path / "list.yaml")]) == 2
        assert "list.yaml: a config file holds a mapping of keys, not a list" in capsys.readouterr().err
        assert main([command, "--configfile", str(tmp_path / "broken.yaml")]) == 2
        assert "broken.yaml: not valid YAML" in capsys.readouterr().err
    assert main(["status", "--config", "shards=many"]) == 2
    assert "invalid config value at shards: 'many' is not of type 'integer'" in capsys.readouterr().err
    assert main(["status", "--config", "shards"]) == 2
    assert "--config 'shards': expected KEY=VALUE" in capsys.readouterr().err


def test_every_misspelt_key_is_reported_at_once(capsys):
    given = {"modle": "x", "frames": {"fsp": 3, "max_frame": 8}, "sampling": {"temprature": 0.1}}
    with pytest.raises(config.ConfigError) as error:
        config.check_keys(given)
    message = str(error.value)
    assert message.startswith("4 keys the config schema does not know:")
    for key, near in [
        ("modle", "model"),
        ("frames.fsp", "frames.fps"),
        ("frames.max_frame", "frames.max_frames"),
    ]:
        assert f"unknown config key '{key}' (did you mean '{near}'?)" in message
    assert "'sampling.temprature' (did you mean 'sampling.temperature'?)" in message
    # on the command line: one line, all four
    assert main(["status", "--config", "modle=x", "shard=3", "promt=hi", "engin={}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.count("unknown config key") == 4, err


def test_a_dotted_key_says_how_to_set_a_nested_one(capsys):
    with pytest.raises(config.ConfigError) as error:
        config.check_keys({"engine.max_model_len": 2})
    message = str(error.value)
    assert "a dotted key does not set a nested value" in message
    assert "--configfile" in message and "--config 'engine={max_model_len: ...}'" in message
    for command in ("status", "retry", "errors"):  # retry checks before it hands --config to snakemake
        assert main([command, "--config", "engine.max_model_len=2"]) == 2
        assert "--config 'engine={max_model_len: ...}'" in capsys.readouterr().err
    # the form it recommends works, and keeps the section's other defaults
    cfg = config.build_config([], ["engine={max_model_len: 2048}", "input=x.json"])
    assert (
        cfg["engine"]["max_model_len"] == 2048
        and cfg["engine"]["threads"] == config.defaults("engine")["threads"]
    )


def test_errors_uses_the_builds_config_or_refuses(tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text(json.dumps([{"video": ["a.mp4"], "caption_meta": {"status": "error", "error": "x"}}]))
    # the checkout's config/config.yaml names another output: never shard ids from the wrong config
    assert main(["errors", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not this config's output (results/captions.json)" in err and "--configfile" in err
    # the build on disk has 4 shards; a config that says 8 is another build's
    (tmp_path / "my.yaml").write_text(f"output: {out}\nresults: {tmp_path / 'res'}\nshards: 8\n")
    write_json(tmp_path / "res" / "shards" / ".state.json", {"shards": {sid: {} for sid in shard_ids(4)}})
    assert main(["errors", "--configfile", str(tmp_path / "my.yaml")]) == 2
    assert "has 4 shards but this config says 8" in capsys.readouterr().err
    assert main(["errors", "--configfile", str(tmp_path / "my.yaml"), "--config", "shards=4"]) == 0
    assert "1 error record(s) in 1 shard(s)" in capsys.readouterr().out


def test_version_comes_from_the_package():
    from importlib import metadata

    proc = run_cli("--version")
    assert proc.returncode == 0
    try:
        expected = metadata.version("vidcap")
    except metadata.PackageNotFoundError:
        from vidcap import __version__ as expected
    assert proc.stdout.strip() == f"vidcap {expected}"


@pytest.mark.parametrize(
    "records, gpus, shards",
    [(0, 1, 1), (7, 1, 1), (500, 1, 2), (5000, 1, 4), (5000, 8, 25), (10**6, 8, 556), (10**7, 8, 2000)],
)
def test_shard_sizing_rule(records, gpus, shards):
    """Caption jobs of ~30 min at 1 record/s per GPU, >= 200 records and >= 4 shards per GPU, <= 2000 shards."""
    assert suggest_shards(records, gpus) == shards
    if 200 * shards <= records and shards < 2000:  # past 2000 shards, planning time wins: bigger shards
        assert 200 <= records / shards <= 1800
    assert suggest_shards(10**6, 8, rate=5.0) == 112  # a measured faster rate: longer shards, fewer jobs


def test_init_writes_a_valid_commented_config(tmp_path, capsys):
    records = make_demo(tmp_path / "data")
    assert (
        main(["init", str(tmp_path / "proj"), "--input", str(records), "--model", "my/model", "--gpus", "2"])
        == 0
    )
    said = capsys.readouterr().out
    text = (tmp_path / "proj" / "config.yaml").read_text(encoding="utf-8")
    given = yaml.safe_load(text)
    assert given["input"] == str(records.resolve()) and given["model"] == "my/model" and given["shards"] == 1
    assert "7 records, 2 GPU(s), 1 records/s per GPU" in text and "docs/sizing.md" in text
    assert text.count("\n#") >= 5  # commented
    config.load(tmp_path / "proj" / "config.yaml")  # valid as written
    assert "snakemake -n" in said and "vidcap status" in said
    # a second init does not overwrite the user's edits
    assert main(["init", str(tmp_path / "proj")]) == 2
    assert "already exists (--force replaces it)" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "other"), "--input", str(tmp_path / "none.json")]) == 2
    assert "none.json: input file not found" in capsys.readouterr().err
    assert not (tmp_path / "other" / "config.yaml").exists()


def test_status_reads_shards_stats_and_in_flight_progress(tmp_path):
    make_demo(tmp_path / "data")
    results = tmp_path / "results"
    cfg = config.load(
        overrides={"input": str(tmp_path / "data" / "records.json"), "results": str(results), "shards": 3}
    )
    assert "no build in" in format_progress(build_progress(cfg))
    sync_shards(cfg["input"], results / "shards", 3, log=None)
    (results / "shards" / ".lock").write_text("1\n")  # a build that started and is no longer running
    counts = [sum(1 for _ in open(results / "shards" / f"{sid}.jsonl")) for sid in shard_ids(3)]
    time.sleep(0.01)
    (results / "captions").mkdir()
    write_json(results / "captions" / "0000.stats.json", {})
    half = JobProgress(progress_path(results / "captions" / "0001.jsonl"), total=4, records=counts[1], base=1)
    half.update(1, force=True)  # 2 of 4 requests settled
    progress = build_progress(cfg)
    assert progress.total == 7 and progress.shards_done == 1
    assert progress.done == pytest.approx(counts[0] + counts[1] / 2)
    assert not progress.active and "build not running" in format_progress(progress)
    # a shard rewritten after its stats were made is not done
    os.utime(results / "captions" / "0000.stats.json", (1, 1))
    assert build_progress(cfg).shards_done == 0


def test_job_log_appends_retries_under_a_header_each(tmp_path):
    path, chatter = tmp_path / "job.log", tmp_path / "job.vllm.log"
    with job_log(str(path), 1, chatter=str(chatter)) as log:
        print("vidcap line", file=log)
        os.write(1, b"engine chatter\n")
    with pytest.raises(RuntimeError), job_log(str(path), 2, chatter=str(chatter)) as log:
        print("second try", file=log)
        raise RuntimeError("engine died")
    text = path.read_text()
    assert text.index("=== attempt 1,") < text.index("vidcap line") < text.index("=== attempt 2,")
    assert "second try" in text and "RuntimeError: engine died" in text  # the reason beside vidcap's lines
    assert "engine chatter" not in text and "engine chatter" in chatter.read_text()
    # Snakemake deletes a job's logs before each attempt: a kept hard link brings the history back
    with pytest.raises(RuntimeError), job_log(str(path), 1) as log:
        print("first try", file=log)
        raise RuntimeError("node lost")
    path.unlink()
    with job_log(str(path), 2) as log:
        print("retry", file=log)
    text = path.read_text()
    assert text.index("first try") < text.index("=== attempt 2,") < text.index("retry")
    assert not kept_log(path).exists()  # a job that ended well leaves no second name
    with job_log(str(path), 1) as log:  # a new build's first attempt starts the log afresh
        print("fresh", file=log)
    assert "second try" not in path.read_text()


def test_frames_log_does_not_call_every_clip_long():
    assert media_label("long", {"path": "a.mp4", "cached": False}) == "video"
    assert media_label("long", {"windows": [{}, {}, {}]}) == "video (3 windows)"
    assert media_label("image", {}) == "image"


@pytest.mark.slow
def test_init_dry_run_build_and_status_while_it_runs(tmp_path, tiny_model):
    """A user's first build on the demo data: init, dry run, build in the background; `vidcap status`
    from another shell shows a growing done count and an ETA, the build prints the same line."""
    from helpers import BIN, SNAKEMAKE, tiny_config

    data = make_demo(tmp_path / "data")
    proj = tmp_path / "proj"
    assert main(["init", str(proj), "--input", str(data), "--model", str(tiny_model)]) == 0
    # CPU-sized frames and engine for the tiny model beside the starter config; 3 shards: progress in steps
    tiny = {
        k: v for k, v in tiny_config(tiny_model, shards=3).items() if k not in ("input", "output", "results")
    }
    (proj / "tiny.yaml").write_text(yaml.safe_dump(tiny), encoding="utf-8")
    configs = [str(proj / "config.yaml"), str(proj / "tiny.yaml")]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(proj), "--configfile", *configs]
    cmd += ["--cores", "2", "--resources", "gpu=1", "--nocolor"]
    dry = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env, timeout=300)
    assert dry.returncode == 0 and "caption_shard" in dry.stdout, dry.stderr[-3000:]

    status = ["status", "--directory", str(proj)] + [a for path in configs for a in ("--configfile", path)]
    with open(tmp_path / "build.err", "w") as err:
        build = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        seen = []
        try:
            deadline = time.monotonic() + 600
            while build.poll() is None and time.monotonic() < deadline:
                line = run_cli(*status).stdout.strip()
                if "build running" in line:
                    seen.append(line)
                time.sleep(0.5)
        finally:
            if build.poll() is None:
                os.killpg(build.pid, 9)
        assert build.wait() == 0, (tmp_path / "build.err").read_text()[-4000:]
    done = [int(line.split("vidcap: ", 1)[1].split("/", 1)[0]) for line in seen]
    assert done == sorted(done) and len(set(done)) >= 2, seen  # grows while it runs
    assert any(re.search(r"records/s, elapsed \d\d:\d\d, ETA \d\d:\d\d", line) for line in seen), seen
    final = run_cli(*status).stdout
    assert (
        "7/7 records captioned (100%)" in final
        and "3/3 shards captioned" in final
        and "build finished" in final
    )
    printed = (tmp_path / "build.err").read_text()
    assert "records captioned" in printed and "build finished" in printed  # the build's own lines
    assert "=== attempt 1," in (proj / "results/logs/caption_shard/0000.log").read_text()


def test_the_builds_reporter_prints_as_caption_jobs_end(tmp_path):
    import io

    from vidcap.progress import start_reporter

    make_demo(tmp_path / "data")
    results = tmp_path / "results"
    cfg = config.load(
        overrides={"input": str(tmp_path / "data" / "records.json"), "results": str(results), "shards": 2}
    )
    sync_shards(cfg["input"], results / "shards", 2, log=None)
    (results / "shards" / ".lock").write_text("1\n")
    stream = io.StringIO()
    finish = start_reporter(cfg, stream, every=3600, poll=0.05)
    time.sleep(0.3)
    write_json(results / "captions" / "0000.stats.json", {})  # a caption job ends: a line, at once
    time.sleep(0.3)
    finish(ended=True)
    lines = stream.getvalue().splitlines()
    assert [line.split(" [")[1] for line in lines] == [
        "0/2 shards captioned, 0 framed; build not running]",
        "1/2 shards captioned, 0 framed; build not running]",
        "1/2 shards captioned, 0 framed; build not running]",
    ]
