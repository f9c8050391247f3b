"""The compact frame cache (vidcap.frame_store): codecs, integrity, and `vidcap cache prune`.

Synthetic frames and one tiny counter clip (test_frames.counter_video): no engine, no workflow.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from test_frames import counter_video, numbers

from vidcap import frame_store, prune
from vidcap.__main__ import main
from vidcap.atomic import write_json
from vidcap.frames import cache_key, cached_sample, ensure_frames, entry_intact, load_frames

SMALL = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 4, "max_frames": 64}


def natural_frames(n=6, height=112, width=168, noise=1.5) -> np.ndarray:
    """Smooth shading, texture and a moving edge: closer to camera footage than flat test patterns."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(n):
        base = 128 + 60 * np.sin(x / 17 + t / 3) * np.cos(y / 23)
        rgb = np.stack([base, base * 0.8 + 30, 255 - base], axis=-1)
        rgb[:, 40 + 10 * t : 70 + 10 * t] *= 0.5  # an object moving right
        rgb += rng.normal(0, noise, rgb.shape)  # sensor noise
        frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return counter_video(tmp_path_factory.mktemp("clip") / "cfr.mp4")


@pytest.mark.parametrize("codec", ["npy", "ffv1"])
def test_lossless_codecs_give_back_the_same_pixels(tmp_path, codec):
    frames = natural_frames()
    dest = tmp_path / f"f{frame_store.suffix(codec)}"
    content = frame_store.encode_array(frames, dest, codec)
    assert content["shape"] == list(frames.shape) and content["bytes"] == dest.stat().st_size
    assert frame_store.is_intact(dest, content)
    assert np.array_equal(frame_store.read(dest, content), frames)


def test_h264_stays_within_its_bound_and_is_smaller(tmp_path):
    # the bound is measured on real clips by bench/cache_codec.py (worst clip 0.96); independent noise per
    # pixel and channel is harder to code than footage, so these frames get little of it
    frames = natural_frames(noise=0.5)
    content = frame_store.encode_array(frames, tmp_path / "f.mkv", "h264")
    back = frame_store.read(tmp_path / "f.mkv", content)
    diff = np.abs(back.astype(np.int16) - frames.astype(np.int16))
    assert back.shape == frames.shape and diff.mean() <= 1.0  # mean abs difference within 1/255
    assert content["bytes"] < frames.nbytes / 3
    # the same frames encode to the same bytes: an entry extracted again matches a manifest's record
    assert frame_store.encode_array(frames, tmp_path / "g.mkv", "h264")["blake2b"] == content["blake2b"]


def test_an_image_round_trips(tmp_path):
    image = natural_frames(1)[0]
    content = frame_store.encode_array(image, tmp_path / "i.mkv", "ffv1")
    assert np.array_equal(frame_store.read(tmp_path / "i.mkv", content), image)


def test_lossy_codec_is_in_the_cache_key_lossless_ones_are_not(clip):
    keys = {c: cache_key(str(clip), "video", {**SMALL, "cache_codec": c}) for c in frame_store.CODECS}
    assert keys["npy"] == keys["ffv1"] != keys["h264"]  # ffv1 keeps raw frames' keys and stored results


@pytest.mark.parametrize("codec", ["h264", "npy"])
def test_zero_filled_entry_is_extracted_again_never_captioned(clip, tmp_path, codec):
    """A crash before the page cache reached the disk can leave a right-sized file of zeros (a raw one
    keeps a valid header when only its frames are lost): its content record tells, and it is re-extracted."""
    params = {**SMALL, "cache_codec": codec}
    entry = cached_sample(str(clip), "video", params, tmp_path)
    first = numbers(load_frames(entry))
    path = Path(entry["frames"])
    size = path.stat().st_size
    keep = frame_store.npystream.HEADER_BYTES if codec == "npy" else 0
    with open(path, "r+b") as handle:  # zeros over the frames, same size
        handle.seek(keep)
        handle.write(bytes(size - keep))
    assert path.stat().st_size == size and not entry_intact(entry)
    if codec != "npy":
        with pytest.raises(frame_store.CacheEntryError):
            load_frames(entry)  # read directly: an error, not black frames
    record = {"videos": [entry], "images": [], "error": None}
    ensure_frames(record, {"cache_dir": str(tmp_path), "frames": params})  # what a caption job does first
    assert record["videos"][0]["cached"] is False and entry_intact(record["videos"][0])
    assert numbers(load_frames(record["videos"][0])) == first
    path.write_bytes(bytes(size))  # and at lookup, in the frames step
    again = cached_sample(str(clip), "video", params, tmp_path)
    assert again["cached"] is False and numbers(load_frames(again)) == first


def test_version_4_entries_are_misses(clip, tmp_path):
    params = {**SMALL, "cache_codec": "npy"}
    entry = cached_sample(str(clip), "video", params, tmp_path)
    sidecar = Path(entry["frames"]).with_suffix(".json")
    write_json(sidecar, entry["meta"])  # version 4's sidecar: the plain metadata
    assert cached_sample(str(clip), "video", params, tmp_path)["cached"] is False


# ------------------------------------------------------------------------------------------ prune
def fake_build(root: Path) -> dict:
    """A results folder as a build leaves it: two shards' manifests and results, plus leftovers."""
    results = root / "results"
    cache, store = results / "frames" / "cache", results / "store"
    files = {}

    def put(path: Path, data: bytes = b"x") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    used = {
        "a": put(cache / "aa" / "aa01.mkv"),
        "a.json": put(cache / "aa" / "aa01.json"),
        "w0": put(cache / "bb" / "bb02-w000.mkv"),
        "w1": put(cache / "bb" / "bb02-w001.mkv"),
        "long.json": put(cache / "bb" / "bb02.json"),
        "img": put(cache / "cc" / "cc03.npy"),
        "img.json": put(cache / "cc" / "cc03.json"),
        "k1": put(store / "k1" / "k1aa.json"),
        "k2": put(store / "k2" / "k2bb.json"),
        "sum": put(store / "s9" / "s9cc.json"),
    }
    unused = {
        "old": put(cache / "aa" / "aa77.npy", b"x" * 1000),  # cache version 4 / old settings
        "old.json": put(cache / "aa" / "aa77.json"),
        "other": put(cache / "dd" / "dd04.mkv"),
        "oldw": put(cache / "bb" / "bb99-w000.mkv"),
        "oldkey": put(store / "k1" / "k1zz.json"),
        "shard3": put(store / "k3" / "k3aa.json"),  # only shard 0003 of an earlier, larger build has it
    }
    old = time.time() - 2 * prune.DEFAULT_MIN_AGE
    temp = {
        "spool": put(cache / "aa" / ".aa01.spool.x1.tmp"),
        "atomic": put(store / "k1" / ".k1aa.json.abc.tmp"),
        "manifest": put(results / "frames" / ".0000.json.q.tmp"),
        "window_dir": put(cache / "bb" / ".bb05-xyz" / "grid.npy").parent,
    }
    for path in temp.values():
        os.utime(path, (old, old))
    fresh = put(cache / "aa" / ".aa08.spool.new.tmp")  # a running job's: stays
    manifests = [
        {
            "records": [
                {"videos": [{"path": "a.mp4", "frames": str(used["a"]), "meta": {}}], "images": []},
                {"videos": [{"path": "gone.mp4", "error": "missing file"}], "images": []},
            ]
        },
        {
            "records": [
                {
                    "videos": [
                        {
                            "path": "long.mp4",
                            "meta": {},
                            "windows": [
                                {"start": 0, "end": 1, "frames": str(used["w0"])},
                                {"start": 1, "end": 2, "frames": str(used["w1"])},
                                {"start": 2, "end": 3, "error": "no decodable frames"},
                            ],
                        }
                    ],
                    "images": [{"path": "p.png", "frames": str(used["img"]), "meta": {}}],
                }
            ]
        },
    ]
    for sid, manifest in zip(("0000", "0001"), manifests):
        write_json(results / "frames" / f"{sid}.json", manifest)
    (results / "captions").mkdir(parents=True)
    (results / "summaries").mkdir(parents=True)
    (results / "captions" / "0000.jsonl").write_text(
        json.dumps({"keys": ["k1aa"]}) + "\n" + json.dumps({"keys": []})
    )
    (results / "captions" / "0001.jsonl").write_text(json.dumps({"keys": ["k2bb"]}) + "\n")
    (results / "summaries" / "0001.jsonl").write_text(json.dumps({"keys": ["k2bb", "s9cc"]}) + "\n")
    (results / "captions" / "0003.jsonl").write_text(
        json.dumps({"keys": ["k3aa"]}) + "\n"
    )  # not this build's
    files.update(used=used, unused=unused, temp=temp, fresh=fresh, results=results)
    return files


def all_files(results: Path) -> set[Path]:
    return {p for p in results.rglob("*") if p.is_file()}


def test_prune_keeps_exactly_what_the_output_references(tmp_path):
    build = fake_build(tmp_path)
    results = build["results"]
    before = all_files(results)
    plan = prune.plan_prune(results, 2)  # shards 0000 and 0001
    assert all_files(results) == before  # a dry run changes nothing
    gone = {p for paths in plan.remove.values() for p in paths}
    assert gone == set(build["unused"].values()) | set(build["temp"].values())
    assert plan.kept["frames"][0] == 7 and plan.kept["store"][0] == 3
    assert plan.removed_bytes("frames") >= 1000
    prune.apply(plan)
    left = all_files(results)
    assert set(build["used"].values()) <= left and build["fresh"] in left
    assert not any(p.exists() for p in [*build["unused"].values(), *build["temp"].values()])
    assert left == before - {p for p in before if any(p == g or g in p.parents for g in gone)}
    again = prune.plan_prune(results, 2)
    assert not any(again.remove.values())  # nothing more to remove


def test_cache_prune_command_dry_run_then_apply(tmp_path, monkeypatch, capsys):
    build = fake_build(tmp_path)
    config = tmp_path / "my.yaml"
    config.write_text(f"input: {tmp_path / 'records.jsonl'}\nresults: {build['results']}\nshards: 2\n")
    before = all_files(build["results"])
    assert main(["cache", "prune", "--configfile", str(config)]) == 0
    out = capsys.readouterr().out
    assert "frame cache: would remove 4 files" in out and "dry run" in out
    assert (
        "result store: would remove 2 files" in out
        and "temporary files of killed jobs: would remove 4" in out
    )
    assert all_files(build["results"]) == before
    assert main(["cache", "prune", "--configfile", str(config), "--apply"]) == 0
    assert "frame cache: removed 4 files" in capsys.readouterr().out
    assert set(build["used"].values()) <= all_files(build["results"])
    assert not any(p.exists() for p in build["unused"].values())


def test_cache_sizes_count_both_stores(tmp_path):
    build = fake_build(tmp_path)
    sizes = prune.cache_sizes(build["results"])
    assert sizes["frame_cache_files"] == 14 and sizes["store_files"] == 6
    assert sizes["frame_cache_bytes"] >= 1000


@pytest.mark.slow
def test_prune_after_real_builds_keeps_what_the_output_uses(tiny_model, tiny_server, tmp_path, monkeypatch):
    """Two real builds (the second with other frame settings: new cache keys, new result keys) on the shared
    tiny server: prune removes exactly the first build's cache and store entries and a killed job's spool;
    the output then needs nothing rebuilt and re-captioning sends no request (the store still has them)."""
    from helpers import (
        SERVER_KEY_ENV,
        caption_stats,
        make_video,
        planned_jobs,
        requests_sent,
        run_snakemake,
        tiny_config,
    )
    from helpers import write_records as write_input

    media, work = tmp_path / "media", tmp_path / "work"
    for i, source in enumerate(["testsrc2", "mandelbrot", "smptebars"]):
        make_video(media / f"v{i}.mp4", seconds=1.0, source=source)
    records = [{"video": [f"v{i}.mp4"], "conversation": [{"from": "human", "value": ""}]} for i in range(3)]
    write_input(work / "records.json", records)
    server = {"backend": "server", "url": tiny_server, "api_key_env": SERVER_KEY_ENV}  # the server's key
    config = tiny_config(tiny_model, media_root=str(media), engine=server)
    run_snakemake(work, config)
    results = work / "results"
    first = all_files(results / "frames" / "cache") | all_files(results / "store")
    config["frames"] = {**config["frames"], "max_frames": 6}
    run_snakemake(work, config)
    killed = next((results / "frames" / "cache").iterdir()) / ".deadbeef.spool.x.tmp"
    killed.write_bytes(b"\0" * 100)
    old = time.time() - 2 * prune.DEFAULT_MIN_AGE
    os.utime(killed, (old, old))
    before = all_files(results)
    monkeypatch.chdir(work)  # the config's paths are relative to the build's directory
    assert main(["cache", "prune", "--configfile", "config.yaml"]) == 0
    assert all_files(results) == before
    assert main(["cache", "prune", "--configfile", "config.yaml", "--apply"]) == 0
    assert all_files(results) == before - first - {killed}
    assert planned_jobs(work, config) == {}  # the output is whole: nothing to rebuild
    stats = caption_stats(results)
    run_snakemake(work, config, "--forcerun", "caption_shard")
    assert requests_sent(results, stats) == 0  # every answer the output uses is still stored
