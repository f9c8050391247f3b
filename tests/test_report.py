"""Build report: summary, histograms, contact sheets, gallery, `vidcap stats`, and the Snakemake report
opened in headless Chromium (slow: real workflow on the tiny model)."""

import html
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from browser import decode_data_uri, embedded_results, report_opened_at, run_chromium
from helpers import ONE_SHARD_JOBS, REPO, make_video, planned_jobs, run_snakemake, tiny_config, write_records
from PIL import Image

from vidcap.records import DEFAULT_KEYS, record_digest
from vidcap.report import build_report
from vidcap.report.charts import histogram_bins, svg_histogram
from vidcap.report.gallery import contact_sheet, gallery_items, gallery_selection, thumbnail_indices
from vidcap.report.pages import CONTROL_CHARS
from vidcap.shards import shard_ids, shard_of, sync_shards
from vidcap.stats import (
    benchmark_files,
    describe,
    error_reason,
    format_summary,
    read_benchmarks,
    summarize_output,
)

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

# the files build_report writes, by output name
REPORT_FILES = [
    "summary",
    "gallery",
    "hist_frames",
    "hist_prompt_tokens",
    "hist_output_tokens",
    "hist_caption_words",
]


def out_record(video, status, caption=None, error=None, frames=4, prompt=90, output=8):
    meta = {
        "status": status,
        "error": error,
        "frames": frames,
        "prompt_tokens": None if status == "error" else prompt,
        "output_tokens": None if status == "error" else output,
        "finish_reason": {"ok": "stop", "truncated": "length"}.get(status),
    }
    return {
        "video": [video],
        "conversation": [{"from": "human", "value": "p"}],
        "caption": caption,
        "caption_meta": meta,
    }


OUTPUT = [
    out_record("a.mp4", "ok", "a red car on a street"),
    out_record("b.mp4", "truncated", "one two three", output=32),
    out_record("clips/c d.mp4", "error", error="c d.mp4: missing file", frames=0),
    out_record("e.mp4", "error", error="e.mp4: not a readable media file (moov atom not found)", frames=0),
    out_record("f.mp4", "error", error="f.mp4: missing file", frames=0),
    out_record("g.mp4", "error", error="too long: 9000 vision tokens exceed max_model_len 4096", frames=700),
]


# ------------------------------------------------------------------------------------------ stats
def test_error_reason_groups_messages_by_kind():
    assert error_reason("clip 17.mp4: missing file", ["clips/clip 17.mp4"]) == "missing file"
    assert (
        error_reason("e.mp4: not a readable media file (moov atom not found)", ["e.mp4"])
        == "not a readable media file"
    )
    assert (
        error_reason("too long: 9000 vision tokens exceed max_model_len 4096")
        == "too long: N vision tokens exceed max_model_len N"
    )
    assert error_reason("") == "unknown"


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_summarize_output_counts_statuses_reasons_and_lengths(tmp_path, suffix):
    path = write_records(tmp_path / f"out{suffix}", OUTPUT)
    summary = summarize_output(path, keep_error_indices=2)
    assert summary["records"] == 6
    assert summary["status"] == {"ok": 1, "truncated": 1, "degenerate": 0, "error": 4}
    assert [(e["reason"], e["count"], e["example_index"]) for e in summary["errors"]] == [
        ("missing file", 2, 2),
        ("not a readable media file", 1, 3),
        ("too long: N vision tokens exceed max_model_len N", 1, 5),
    ]
    assert summary["error_indices"] == [2, 3]
    values = summary["values"]
    assert values["caption_words"] == Counter({6: 1, 3: 1})
    assert values["output_tokens"] == Counter({8: 1, 32: 1})
    assert values["frames"] == Counter({4: 2, 700: 1})  # failed media (0 frames) are not counted
    assert summary["finish_reasons"] == {"stop": 1, "length": 1}


def test_describe_quantiles():
    assert describe(Counter()) is None
    desc = describe(Counter({1: 1, 2: 1, 3: 1, 10: 1}))
    assert (desc["n"], desc["min"], desc["median"], desc["mean"], desc["max"]) == (4, 1, 2, 4.0, 10)
    assert describe(Counter({5: 100, 50: 1}))["p95"] == 5


def test_read_benchmarks_sums_jobs_per_step(tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "caption_shard").mkdir(parents=True)
    (bench / "extract_frames").mkdir()
    (bench / "caption_shard" / "0000.tsv").write_text(
        BENCH_HEADER + "12.5\t0:00:12\t1700\t1\t1\t1\t0\t0\t99\t13\n"
    )
    (bench / "caption_shard" / "0001.tsv").write_text(
        BENCH_HEADER + "7.5\t0:00:07\t1800\t1\t1\t1\t0\t0\t99\t8\n"
    )
    (bench / "caption_shard" / "0009.tsv").write_text(BENCH_HEADER + "99\t0:01:39\t1\t1\t1\t1\t0\t0\t99\t1\n")
    (bench / "extract_frames" / "0000.tsv").write_text(
        BENCH_HEADER + "0.4\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n"
    )
    current = [bench / "caption_shard" / f"{sid}.tsv" for sid in shard_ids(2)] + [
        bench / "extract_frames" / "0000.tsv"
    ]
    steps = read_benchmarks(current)
    assert steps["caption_shard"] == {
        "jobs": 2,
        "wall_seconds": 20.0,
        "longest_job_seconds": 12.5,
        "cpu_seconds": 21.0,
        "max_rss_mb": 1800.0,
    }
    assert steps["extract_frames"]["jobs"] == 1 and steps["extract_frames"]["max_rss_mb"] == 0.0
    assert read_benchmarks(benchmark_files(bench))["caption_shard"]["jobs"] == 3
    assert benchmark_files(tmp_path / "nothing") == [] and read_benchmarks([]) == {}
    assert read_benchmarks([bench / "caption_shard" / "0005.tsv"]) == {}  # not run yet: skipped


def test_format_summary_names_the_tiny_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    summary = summarize_output(write_records(tmp_path / "out.json", OUTPUT))
    assert "gibberish" not in format_summary(summary, model=str(model))
    (model / "VIDCAP_TINY_MODEL.txt").write_text("tiny")
    text = format_summary(
        summary,
        {
            "caption_shard": {
                "jobs": 2,
                "wall_seconds": 20.0,
                "longest_job_seconds": 12.5,
                "cpu_seconds": 21.0,
                "max_rss_mb": 1800.0,
            }
        },
        str(model),
    )
    assert "gibberish" in text and "caption_shard" in text and "20.0 s total" in text


def test_stats_command_prints_the_summary(tmp_path):
    path = write_records(tmp_path / "out.jsonl", OUTPUT)
    proc = subprocess.run(
        [sys.executable, "-m", "vidcap", "stats", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert f"{path}: 6 records" in proc.stdout
    assert re.search(r"^\s+error\s+4\s+66\.7%$", proc.stdout, re.MULTILINE)
    assert re.search(r"^\s+2\s+missing file\s+\(e\.g\. record 2\)$", proc.stdout, re.MULTILINE)
    assert re.search(r"^\s+caption_words\s+2\s+3\s", proc.stdout, re.MULTILINE)


# ----------------------------------------------------------------------------- histograms, sheets
def test_histogram_bins_one_per_value_or_equal_width():
    assert histogram_bins(Counter()) == []
    assert histogram_bins(Counter({4: 2, 6: 1})) == [(4, 5, 2), (5, 6, 0), (6, 7, 1)]
    counts = Counter({v: 1 for v in range(0, 1000, 7)})
    bins = histogram_bins(counts, max_bins=30)
    assert len(bins) <= 30 and sum(b[2] for b in bins) == len(counts)
    assert all(b[1] - b[0] == bins[0][1] - bins[0][0] for b in bins)


SVG = "{http://www.w3.org/2000/svg}"


def svg_bars(svg: str) -> list[tuple[int, str, float]]:
    """(count, tooltip, drawn height) of each bar of a histogram SVG."""
    bars = []
    for group in ET.fromstring(svg).iter(f"{SVG}g"):
        if group.get("class") == "bar":
            path = group.find(f".//{SVG}path").get("d")
            ys = [float(y) for y in re.findall(r"[ML] [-\d.]+ ([-\d.]+)", path)]
            bars.append((int(group.get("data-count")), group.find(f"{SVG}title").text, max(ys) - min(ys)))
    return bars


def test_svg_histogram_is_valid_svg_with_one_bar_per_bin():
    counts = Counter({10: 3, 11: 1, 14: 2})
    svg = svg_histogram(counts, "Title <x>", "tokens")
    bars = svg_bars(svg)
    assert [(c, t) for c, t, _ in bars] == [
        (3, "10: 3"),
        (1, "11: 1"),
        (0, "12: 0"),
        (0, "13: 0"),
        (2, "14: 2"),
    ]
    heights = {c: h for c, _, h in bars}
    assert heights[3] == pytest.approx(3 * heights[1], rel=0.01) and heights[0] == 0  # bars drawn to scale
    assert "Title &lt;x&gt;" in svg  # the title is text, escaped
    assert svg == svg_histogram(counts, "Title <x>", "tokens")  # byte-identical rebuilds
    wide = svg_bars(svg_histogram(Counter({v: 1 for v in range(0, 1000, 7)}), "wide", "x"))
    assert len(wide) <= 30 and sum(c for c, _, _ in wide) == 143 and wide[0][1].startswith("0-")
    empty = svg_histogram(Counter(), "empty", "x")
    assert svg_bars(empty) == [] and "no values" in empty


def test_contact_sheet_one_row_per_video_up_to_eight_thumbnails():
    assert thumbnail_indices(3) == [0, 1, 2]
    assert thumbnail_indices(20) == [0, 3, 5, 8, 11, 14, 16, 19]
    video = np.zeros((20, 84, 112, 3), np.uint8)
    video[:, :, :, 0] = np.arange(20)[:, None, None] * 10  # red channel encodes the frame number
    image = np.full((56, 56, 3), 200, np.uint8)
    sheet = contact_sheet([video, image], thumb_height=42, gap=2)
    thumb_w = 56  # 112 x 84 scaled to height 42
    assert sheet.size == (8 * thumb_w + 7 * 2, 2 * 42 + 2)
    firsts = [sheet.getpixel((i * (thumb_w + 2) + 5, 20))[0] for i in range(8)]
    assert firsts == [i * 10 for i in thumbnail_indices(20)]
    assert sheet.getpixel((10, 42 + 2 + 10)) == (200, 200, 200)  # the image row


def test_gallery_selection_small_all_big_sample_plus_errors():
    assert gallery_selection(5, [1], sample=10) == [0, 1, 2, 3, 4]
    picked = gallery_selection(1000, [7, 13, 500], sample=10, max_errors=2)
    assert len(picked) == 12 and {7, 13} <= set(picked) and 500 in picked  # 500 is also a sample point
    assert picked == sorted(picked)


# ------------------------------------------------------------------- gallery and report, no vLLM
def shards_of(tmp_path: Path) -> Path:
    return tmp_path / "results" / "shards"


def fake_build(tmp_path: Path, n: int = 6, n_shards: int = 3):
    """Input, output, manifests and cached frames as the workflow writes them (random frames)."""
    keys = dict(DEFAULT_KEYS)
    records = [
        {"video": [f"clips/v{i}.mp4"], "conversation": [{"from": "human", "value": ""}], "id": i}
        for i in range(n)
    ]
    write_records(tmp_path / "records.json", records)
    rng = np.random.default_rng(0)
    ids = shard_ids(n_shards)
    entries = {sid: [] for sid in ids}
    output = []
    for i, record in enumerate(records):
        sid = ids[shard_of(record, keys, n_shards)]
        if i == 2:  # a missing video: no frames
            entry = {
                "digest": record_digest(record),
                "videos": [{"path": "clips/v2.mp4", "error": "missing file"}],
                "images": [],
                "error": "v2.mp4: missing file",
            }
            output.append(out_record(record["video"][0], "error", error="v2.mp4: missing file", frames=0))
        else:
            frames = rng.integers(0, 255, (4 + i % 3 * 2, 28, 56, 3), dtype=np.uint8)
            npy = tmp_path / "results" / "frames" / "cache" / f"{i}.npy"
            npy.parent.mkdir(parents=True, exist_ok=True)
            np.save(npy, frames)
            meta = {
                "fps": 10.0,
                "frames_indices": list(range(0, 2 * len(frames), 2)),
                "sampled_frames": len(frames),
                "width": 56,
                "height": 28,
                "source_width": 160,
                "source_height": 80,
            }
            entry = {
                "digest": record_digest(record),
                "images": [],
                "error": None,
                "videos": [{"path": record["video"][0], "frames": str(npy), "meta": meta}],
            }
            output.append(
                out_record(record["video"][0], "ok", f"caption <{i}>\x07 of record {i}", frames=len(frames))
            )
        output[-1]["id"] = i
        entries[sid].append(entry)
    manifests = []
    for sid in ids:
        path = tmp_path / "results" / "frames" / f"{sid}.json"
        path.write_text(json.dumps({"shard": sid, "records": entries[sid]}))
        manifests.append(str(path))
    write_records(tmp_path / "captions.json", output)
    sync_shards(tmp_path / "records.json", tmp_path / "results" / "shards", n_shards, keys, log=None)
    return records, output, manifests


def test_gallery_items_pair_records_with_their_shard_manifest_entries(tmp_path):
    records, _, manifests = fake_build(tmp_path)
    items = gallery_items(shards_of(tmp_path), tmp_path / "captions.json", manifests, {}, [0, 2, 3, 5])
    assert [it["index"] for it in items] == [0, 2, 3, 5]
    for item in items:
        assert item["record"]["id"] == item["index"]
        assert item["entry"]["digest"] == record_digest(records[item["index"]])
    # a manifest from other records (stale) is not shown as this record's frames
    first = json.loads(Path(manifests[0]).read_text())
    for entry in first["records"]:
        entry["digest"] = "0" * 20
    Path(manifests[0]).write_text(json.dumps(first))
    items = gallery_items(shards_of(tmp_path), tmp_path / "captions.json", manifests, {}, list(range(6)))
    stale = [it for it in items if shard_of(records[it["index"]], DEFAULT_KEYS, 3) == 0]
    assert stale and all(it["entry"] is None for it in stale)


def test_build_report_writes_summary_histograms_and_gallery(tmp_path):
    _, _, manifests = fake_build(tmp_path)
    bench = tmp_path / "results" / "benchmarks" / "caption_shard" / "0000.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text(BENCH_HEADER + "3.0\t0:00:03\t100\t1\t1\t1\t0\t0\t99\t3\n")
    stats = tmp_path / "results" / "captions" / "0000.stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"output_tokens": 40, "generate_seconds": 2.0}))
    names = REPORT_FILES
    out = {
        name: str(tmp_path / "report" / (name + (".html" if name in ("summary", "gallery") else ".svg")))
        for name in names
    }
    settings = {
        "model": "some/model",
        "prompt": "p",
        "system_prompt": "s",
        "shards": 3,
        "keys": {},
        "frames": {"fps": 2.0},
        "sampling": {"max_tokens": 8},
        "engine": {},
    }
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        files = {"manifests": manifests, "caption_stats": [stats], "benchmarks": [bench]}
        summary = build_report(
            str(shards_of(tmp_path)), str(tmp_path / "captions.json"), files, out, settings, log=handle
        )
    assert summary["status"] == {"ok": 5, "truncated": 0, "degenerate": 0, "error": 1}
    gallery = Path(out["gallery"]).read_text()
    cards = re.findall(r'<div class="record (\w+)" data-index="(\d+)"', gallery)
    assert cards == [("error" if i == 2 else "ok", str(i)) for i in range(6)]
    assert gallery.count('<img class="strip"') == 5 and "gibberish" not in gallery
    assert "caption &lt;3&gt;\ufffd of record 3" in gallery  # escaped, control character made visible
    summary_page = Path(out["summary"]).read_text()
    assert 'data-status="ok">5<' in summary_page and "missing file" in summary_page
    assert "caption_shard" in summary_page and "(20.0 tokens/s)" in summary_page
    frames_bars = svg_bars(Path(out["hist_frames"]).read_text())
    assert sum(c for c, _, _ in frames_bars) == 5  # one per video with frames
    assert summary_page.count("<svg") == 4  # the histograms, inline
    assert "gallery: 6 of 6 records" in log.read_text()
    assert 'id="audit"' in summary_page and "5 of 6 records have a caption" in summary_page
    # the frame cache (here the test's .npy files) and result store sizes, with the codec
    disk = re.search(
        r'<p id="disk">Frame cache: (\d+) files.*?\((\w+)\); result store: 0 files', summary_page, re.S
    )
    assert disk and int(disk[1]) >= 5 and disk[2] == "h264"


def test_big_build_gallery_shows_a_sample_plus_every_error(tmp_path):
    _, _, manifests = fake_build(tmp_path, n=12, n_shards=2)
    out = {name: str(tmp_path / "report" / f"{name}.out") for name in REPORT_FILES}
    settings = {"model": "m", "shards": 2, "gallery_sample": 3}
    build_report(
        str(shards_of(tmp_path)),
        str(tmp_path / "captions.json"),
        {"manifests": manifests},
        out,
        settings,
        log=sys.stderr,
    )
    gallery = Path(out["gallery"]).read_text()
    assert re.findall(r'data-index="(\d+)"', gallery) == ["0", "2", "4", "8"]  # samples 0, 4, 8 + error 2
    assert "Showing 4 of 12 records: an evenly spaced sample of 3 plus every error." in gallery
    assert "No benchmark files found" in Path(out["summary"]).read_text()


# -------------------------------------------------------------------- the real workflow and browser
def dom_of(path: Path) -> str:
    return run_chromium(path.as_uri(), "--dump-dom").stdout


@pytest.mark.slow
def test_snakemake_report_in_chromium_shows_every_record(tiny_model, tmp_path):
    """Demo-like build (3 clips + a missing one), `snakemake --report`, opened in headless Chromium."""
    records = []
    for i, source in enumerate(["testsrc2", "mandelbrot", "smptebars"]):
        make_video(tmp_path / "clips" / f"clip {i}.mp4", seconds=1.0 + i * 0.5, size="96x64", source=source)
        records.append({"video": [f"clips/clip {i}.mp4"], "conversation": [{"from": "human", "value": ""}]})
    records.insert(2, {"video": ["clips/missing.mp4"], "conversation": [{"from": "human", "value": ""}]})
    write_records(tmp_path / "records.json", records)
    config = tiny_config(tiny_model, shards=1)  # one vLLM engine
    run_snakemake(tmp_path, config)
    run_snakemake(tmp_path, config, "--report", "report.html")
    output = json.loads((tmp_path / "captions.json").read_text(encoding="utf-8"))
    statuses = Counter(r["caption_meta"]["status"] for r in output)
    assert statuses["error"] == 1 and len(output) == 4

    report_text = (tmp_path / "report.html").read_text(encoding="utf-8")
    results = {r["name"]: r for r in embedded_results(report_text).values()}
    assert set(results) == {
        "summary.html",
        "gallery.html",
        "hist_frames.svg",
        "hist_prompt_tokens.svg",
        "hist_output_tokens.svg",
        "hist_caption_words.svg",
    }

    # the report app itself renders (it is JavaScript): our categories and workflow description show
    dom = dom_of(tmp_path / "report.html")
    app = re.sub(r"<script.*?</script>", "", dom[dom.index('<div id="app">') :], flags=re.DOTALL)
    for category in ("Build summary", "Caption gallery", "Histograms"):
        assert f"<span>{category}</span>" in app  # the navigation the app rendered
    assert "vidcap captioned the records of" in app  # workflow.rst, rendered
    view = tmp_path / "report_view.html"
    view.write_text(report_opened_at(report_text, "gallery.html", "Caption gallery"), encoding="utf-8")
    shot = tmp_path / "report.png"
    run_chromium(view.as_uri(), f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        assert len(image.convert("RGB").getcolors(1 << 20)) > 500  # thumbnails, not a blank page

    # the gallery as the report embeds it, rendered by the browser
    gallery = tmp_path / "gallery_from_report.html"
    gallery.write_bytes(decode_data_uri(results["gallery.html"]["data_uri"]))
    dom = dom_of(gallery)
    cards = re.findall(
        r'<div class="record \w+" data-index="(\d+)" data-status="(\w+)">(.*?)</div>\n</div>', dom, re.DOTALL
    )
    assert [(int(i), s) for i, s, _ in cards] == [
        (i, r["caption_meta"]["status"]) for i, r in enumerate(output)
    ]
    for (_, status, card), record in zip(cards, output, strict=True):
        has_strip = '<img class="strip"' in card
        assert has_strip == (status != "error"), card[:300]
        caption = re.search(r'<p class="caption[^"]*">(.*?)</p>', card, re.DOTALL).group(1)
        if record["caption"] is None:
            assert caption == "(no caption)"
        else:
            assert html.unescape(caption) == CONTROL_CHARS.sub("\ufffd", record["caption"])
    assert "missing file" in cards[2][2]
    strips = sum(1 for r in output if r["caption_meta"]["status"] != "error")
    assert re.search(rf'<body data-strips-decoded="{strips}">', dom), (
        "thumbnails did not decode in the browser"
    )
    assert "gibberish" in dom  # the tiny model is named as such

    # summary counts match the output file
    summary = decode_data_uri(results["summary.html"]["data_uri"]).decode("utf-8")
    for status in ("ok", "truncated", "error"):
        assert f'data-status="{status}">{statuses[status]}<' in summary
    assert re.search(r"<td>missing file</td><td class=\"num\">1</td>", summary)
    assert "caption_shard" in summary and "extract_frames" in summary  # wall time per step

    # the report is part of the build: up to date after it, rebuilt (once) when a record changes
    assert planned_jobs(tmp_path, config) == {}
    records[0]["tag"] = "edited"
    write_records(tmp_path / "records.json", records)
    assert planned_jobs(tmp_path, config) == ONE_SHARD_JOBS
