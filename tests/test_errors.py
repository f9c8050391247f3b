"""`python -m vidcap errors`: which shards hold error records, why, and the command that retries only them."""

import json
import subprocess
import sys
from pathlib import Path

from vidcap.config import defaults
from vidcap.errors import error_shards, retry_command
from vidcap.shards import shard_ids, shard_of

REPO = Path(__file__).resolve().parents[1]


def output_file(path: Path) -> list[dict]:
    records = []
    for i in range(12):
        status = "error" if i in (2, 7, 9) else "ok"
        reason = "a.mp4: missing file" if i != 9 else "engine error: bad item"
        meta = {"status": status, "error": reason if status == "error" else None}
        records.append({"video": [f"clips/{i}.mp4"], "caption": None, "caption_meta": meta})
    path.write_text(json.dumps(records), encoding="utf-8")
    return records


def test_error_shards_and_the_retry_command(tmp_path):
    records = output_file(tmp_path / "out.json")
    keys = defaults("keys")
    found = error_shards(tmp_path / "out.json", 4, keys)
    expected = {}
    for i in (2, 7, 9):
        sid = shard_ids(4)[shard_of(records[i], keys, 4)]
        expected[sid] = expected.get(sid, 0) + 1
    assert found["shards"] == dict(sorted(expected.items()))
    assert sum(found["reasons"].values()) == 3
    command = retry_command(list(found["shards"]), "results")
    assert command.startswith("snakemake --forcerun ")
    # their frames jobs, so frames errors are extracted again; caption jobs then send only store misses
    assert all(f"results/frames/{sid}.json" in command for sid in expected)


def test_errors_command_line_uses_the_builds_config(tmp_path):
    output_file(tmp_path / "out.json")
    (tmp_path / "my.yaml").write_text(
        f"input: in.json\noutput: {tmp_path / 'out.json'}\nshards: 3\nresults: work/res\n", encoding="utf-8"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidcap",
            "errors",
            str(tmp_path / "out.json"),
            "--configfile",
            str(tmp_path / "my.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert "3 error record(s)" in proc.stdout
    assert "python -m vidcap retry --configfile" in proc.stdout
