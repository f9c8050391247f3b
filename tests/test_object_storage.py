"""Records, media and output on S3-compatible storage (vidcap.object_storage, docs/object-storage.md)."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, CAPTIONED, jobs_run, make_video, run_snakemake, tiny_config, write_records

from vidcap.frames import cache_key, extract_frames, staged_urls
from vidcap.object_storage import content_identity, is_url, join_url, sibling
from vidcap.provenance import provenance_path
from vidcap.records import resolve_media

FRAMES = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544}


# ----------------------------------------------------------------------------------------- unit
def test_urls_are_told_from_paths():
    assert is_url("s3://bucket/a.mp4") and is_url("gs://b/x")
    assert not is_url("clips/s3://x.mp4") and not is_url("/data/a.mp4") and not is_url(None)


def test_media_resolve_under_a_url_root():
    root = "s3://bkt/data"
    assert resolve_media("clips/a b.mp4", root) == "s3://bkt/data/clips/a b.mp4"
    assert resolve_media("./clips/../x.mp4", root) == "s3://bkt/data/x.mp4"
    assert resolve_media("s3://other/y.mp4", "/local") == "s3://other/y.mp4"  # a URL is never joined
    assert resolve_media("/abs/z.mp4", root) == "/abs/z.mp4"  # a local absolute path stays local
    assert resolve_media("clips/a.mp4", "/data/") == "/data/clips/a.mp4"
    assert join_url("s3://b/", "k.mp4") == "s3://b/k.mp4"


def test_provenance_goes_beside_an_output_on_storage():
    assert provenance_path("s3://bkt/out/captions.json") == "s3://bkt/out/captions.json.provenance.json"
    assert sibling("s3://b/x/y.json", "p.json") == "s3://b/x/p.json"
    assert provenance_path("out/captions.json") == Path("out/captions.json.provenance.json")


def test_a_staged_copy_is_known_by_url_and_content_not_by_its_mtime(tmp_path):
    first = make_video(tmp_path / "a" / "clip.mp4")
    again = tmp_path / "b" / "clip.mp4"  # a second retrieval: other place, new mtime, same bytes
    again.parent.mkdir()
    shutil.copyfile(first, again)
    os.utime(again, (1, 1))
    url = "s3://bkt/clip.mp4"
    assert content_identity(url, first) == content_identity(url, again)
    keys = [cache_key(str(p), "video", FRAMES, content_identity(url, p)) for p in (first, again)]
    assert keys[0] == keys[1] != cache_key(str(first), "video", FRAMES)
    assert content_identity("s3://bkt/other.mp4", first) != content_identity(url, first)


def test_a_shard_frames_job_decodes_staged_copies_and_names_urls(tmp_path):
    make_video(tmp_path / "stage1" / "bkt" / "clips" / "a.mp4")
    shard = tmp_path / "0.jsonl"
    records = [{"video": ["clips/a.mp4"]}, {"video": ["clips/gone.mp4"]}, {"video": ["clips/a.mp4"]}]
    shard.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = {"frames": FRAMES, "media_root": "s3://bkt", "cache_dir": str(tmp_path / "cache")}
    assert staged_urls(str(shard), settings) == ["s3://bkt/clips/a.mp4", "s3://bkt/clips/gone.mp4"]

    def run(stage: str) -> dict:
        local = str(tmp_path / stage / "bkt" / "clips" / "a.mp4")
        manifest = tmp_path / f"{stage}.json"
        extract_frames(str(shard), str(manifest), settings, staged={"s3://bkt/clips/a.mp4": local})
        return json.loads(manifest.read_text())["records"]

    first = run("stage1")
    assert first[0]["error"] is None and first[0]["videos"][0]["path"] == "s3://bkt/clips/a.mp4"
    assert first[1]["error"] == "gone.mp4: missing file"
    # Snakemake deleted its copy and retrieved the object again for a rerun: the frames are cached
    (tmp_path / "stage2" / "bkt").mkdir(parents=True)
    shutil.copytree(tmp_path / "stage1" / "bkt" / "clips", tmp_path / "stage2" / "bkt" / "clips")
    shutil.rmtree(tmp_path / "stage1")
    again = run("stage2")
    assert (
        again[0]["videos"][0]["cached"] and again[0]["videos"][0]["frames"] == first[0]["videos"][0]["frames"]
    )


# ----------------------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1 (nothing leaves the machine), with a bucket."""
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="vidcap", aws_secret_access_key="vidcap-secret"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket="vidcap-test")
            break
        except Exception:  # noqa: BLE001 -- not listening yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(log.read_text()) from None
            time.sleep(0.2)
    yield url, client
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_s3_round_trip_equals_a_local_build(s3_server, tiny_model, tmp_path, monkeypatch):
    """Records and media on S3, the output written to S3: the captions equal a local build's of the
    same files; a second run plans nothing; a missing object is its record's error, as locally."""
    url, client = s3_server
    # credentials through the plugin's environment variables: never on a command line or in a log
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "vidcap")
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", "vidcap-secret")
    local = tmp_path / "local"
    records = []
    for i, source in enumerate(["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc"]):
        make_video(local / "clips" / f"clip {i}.mp4", seconds=1, source=source)
        records.append({"video": [f"clips/clip {i}.mp4"], "id": i})
    records.append({"video": ["clips/missing.mp4"], "id": 4})
    write_records(local / "records.json", records)
    for path in [local / "records.json", *sorted((local / "clips").iterdir())]:
        client.upload_file(str(path), "vidcap-test", f"data/{path.relative_to(local).as_posix()}")
    config = tiny_config(tiny_model, shards=1)  # one engine start per build
    run_snakemake(local, config)
    expected = json.loads((local / "captions.json").read_text(encoding="utf-8"))

    remote = tmp_path / "remote"
    remote.mkdir()
    s3_config = {
        **config,
        "input": "s3://vidcap-test/data/records.json",
        "output": "s3://vidcap-test/out/captions.json",
    }
    storage_args = ("--storage-s3-endpoint-url", url)
    proc = run_snakemake(remote, s3_config, *storage_args)
    assert jobs_run(proc.stdout + proc.stderr)["extract_frames"] == 1
    got = json.loads(client.get_object(Bucket="vidcap-test", Key="out/captions.json")["Body"].read())
    assert got == expected
    assert all(r["caption_meta"]["status"] in CAPTIONED for r in got[:4])
    assert got[4]["caption_meta"]["status"] == "error" and "missing file" in got[4]["caption_meta"]["error"]
    provenance = (
        client.get_object(Bucket="vidcap-test", Key="out/captions.json.provenance.json")["Body"]
        .read()
        .decode()
    )
    assert "s3://vidcap-test/out/captions.json" in provenance and "vidcap-secret" not in provenance
    assert "vidcap-secret" not in proc.stdout + proc.stderr
    assert not (remote / "captions.json").exists()  # written to the bucket, not beside the workflow
    assert dry_run(remote, s3_config, *storage_args) == {}
    # an object added for a record that had none reruns its shard's frames job (the shard's list of
    # staged media changed); removed again, the build is up to date again
    client.upload_file(str(local / "clips" / "clip 1.mp4"), "vidcap-test", "data/clips/missing.mp4")
    assert dry_run(remote, s3_config, *storage_args)["extract_frames"] == 1
    client.delete_object(Bucket="vidcap-test", Key="data/clips/missing.mp4")
    assert dry_run(remote, s3_config, *storage_args) == {}
    # an object replaced in place: no stamp in the shard line (vidcap cannot stat a URL), but its
    # LastModified is newer than the frames manifest, so Snakemake reruns that shard's frames job
    client.upload_file(str(local / "clips" / "clip 1.mp4"), "vidcap-test", "data/clips/clip 0.mp4")
    assert dry_run(remote, s3_config, *storage_args)["extract_frames"] == 1


def dry_run(workdir, config, *args):
    proc = run_snakemake(workdir, config, *args, "--dry-run")
    return jobs_run(proc.stdout + proc.stderr)
