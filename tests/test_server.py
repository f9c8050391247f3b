"""engine.backend: server against a real ``vllm serve`` (OpenAI API server) of the tiny Qwen2-VL on localhost.

The same shard is captioned through the server and by an in-process engine with seeded sampling
(temperature 0.8): frames sent as lossless PNG with their metadata must give identical captions.
The server requires an API key (VLLM_API_KEY in its environment); every job reads it from the variable
that engine.api_key_env names.
"""

import json
import socket

import pytest
from helpers import (
    CAPTIONED,
    SERVER_API_KEY,
    SERVER_KEY_ENV,
    make_video,
    run_snakemake,
    tiny_config,
    write_records,
)

from vidcap.caption import caption_shard
from vidcap.engine import EngineFailure
from vidcap.frames import extract_frames
from vidcap.summary import summarize_shard

pytestmark = pytest.mark.slow

FRAMES = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544}
KEY_ENV, API_KEY = (
    SERVER_KEY_ENV,
    SERVER_API_KEY,
)  # a made-up key: the tests look for it in everything written


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_server):
    """The session's ``vllm serve`` (tests/conftest.py): it requires the key in API_KEY."""
    return tiny_server


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make_video(root / "a.mp4", seconds=2, size="96x64", rate=8)
    make_video(root / "b.mp4", seconds=1, size="96x64", rate=8, source="mandelbrot")
    from PIL import Image

    Image.new("RGB", (80, 60), (10, 200, 90)).save(root / "g.png")
    records = [
        {"video": "a.mp4"},
        {"video": "b.mp4", "image": "g.png"},
        {"image": "g.png"},
        {"video": ["a.mp4", "b.mp4"]},
        {"video": "missing.mp4"},
    ]
    write_records(root / "s.jsonl", records)
    extract_frames(
        str(root / "s.jsonl"),
        str(root / "m.json"),
        {"keys": {}, "frames": FRAMES, "cache_dir": str(root / "cache"), "media_root": str(root)},
    )
    return root


def settings(model, **engine):
    return {
        "model": str(model),
        "prompt": "Describe.",
        "system_prompt": "You are a helpful assistant.",
        "keys": {},
        "sampling": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 12, "seed": 3},
        "frames": FRAMES,
        "engine": {
            "max_model_len": 1024,
            "dtype": "float32",
            "enforce_eager": True,
            "cpu_kvcache_space_gb": 1,
            "api_key_env": KEY_ENV,
            **engine,
        },
    }


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_server_captions_equal_offline_captions(server, tiny_model, shard):
    caption_shard(
        str(shard / "s.jsonl"),
        str(shard / "m.json"),
        str(shard / "server.jsonl"),
        settings(tiny_model, backend="server", url=server, concurrency=2),
    )
    caption_shard(
        str(shard / "s.jsonl"), str(shard / "m.json"), str(shard / "offline.jsonl"), settings(tiny_model)
    )
    served, offline = read(shard / "server.jsonl"), read(shard / "offline.jsonl")
    for i in (0, 1, 2):  # video, image + video, image only
        assert served[i]["caption_meta"]["status"] in CAPTIONED
        assert served[i]["caption"] == offline[i]["caption"]
        for key in ("prompt_tokens", "output_tokens", "finish_reason", "seed", "frames"):
            assert served[i]["caption_meta"][key] == offline[i]["caption_meta"][key], key
    assert served[3]["caption_meta"]["error"] == "server backend: one video per record at most"
    assert (
        served[4]["caption_meta"]["error"]
        == offline[4]["caption_meta"]["error"]
        == "missing.mp4: missing file"
    )


def test_candidates_and_json_answers_equal_through_the_server(server, tiny_model, shard, tmp_path):
    """n=2 candidates and a structured answer through the server (n, response_format json_schema); the
    in-process side of both is tested in test_caption_quality (a second in-process engine here would
    share this process with the first one's torn-down state)."""
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string", "maxLength": 40}},
        "required": ["summary"],
        "additionalProperties": False,
    }
    (tmp_path / "answer.json").write_text(json.dumps(schema))
    quality = {
        "candidates": {"n": 2, "keep": "all"},
        "output_format": "json",
        "output_schema": str(tmp_path / "answer.json"),
    }
    job = {**settings(tiny_model, backend="server", url=server, concurrency=2), **quality}
    job["sampling"] = {**job["sampling"], "max_tokens": 200}
    stats = caption_shard(str(shard / "s.jsonl"), str(shard / "m.json"), str(tmp_path / "served.jsonl"), job)
    served = read(tmp_path / "served.jsonl")
    for result in served[:3]:  # video, image + video, image only
        assert result["caption_meta"]["status"] in ("ok", "degenerate"), result["caption_meta"]
        assert len(result["captions"]) == 2 and result["caption"] in result["captions"]
        assert result["caption_json"] == {"summary": result["caption"]}
    assert stats["output_tokens"] > stats["requests"]  # usage counts both candidates


def test_unreachable_server_fails_the_job_and_writes_nothing(tiny_model, shard):
    """No server: an engine-level failure, so the job fails (Snakemake retries it), never per-record errors."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    out = shard / "down.jsonl"
    with pytest.raises(EngineFailure, match="server unreachable"):
        caption_shard(
            str(shard / "s.jsonl"),
            str(shard / "m.json"),
            str(out),
            settings(tiny_model, backend="server", url=url, retries=2),
        )
    assert not out.exists() and not out.with_suffix(".stats.json").exists()


def test_server_failing_every_request_fails_the_job(tiny_model, shard):
    """A server that is up (/health 200) but answers 503 to every request: after the retries the job fails."""
    import http.server
    import threading

    class Overloaded(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- the http.server interface
            self.send_response(200)
            self.end_headers()

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "overloaded"}}')

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Overloaded)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out = shard / "busy.jsonl"
    try:
        with pytest.raises(EngineFailure, match="HTTP 503"):
            caption_shard(
                str(shard / "s.jsonl"),
                str(shard / "m.json"),
                str(out),
                settings(
                    tiny_model, backend="server", url=f"http://127.0.0.1:{httpd.server_port}", retries=1
                ),
            )
    finally:
        httpd.shutdown()
    assert not out.exists()


def test_server_summaries_equal_offline_summaries(server, tiny_model, tmp_path):
    """long_video summaries through the server and by an in-process engine, seeded: the same text (gibberish:
    tiny random model); records without windows pass through untouched."""
    windows = [
        {"start": 0.0, "end": 60.0, "caption": "a red car", "status": "ok"},
        {"start": 60.0, "end": 120.0, "caption": "a blue sky", "status": "ok"},
    ]
    lines = [
        {
            "digest": "d1",
            "caption": None,
            "caption_meta": {"status": "ok", "error": None, "windows": windows},
        },
        {"digest": "d2", "caption": "short clip", "caption_meta": {"status": "ok", "error": None}},
    ]
    captions = write_records(tmp_path / "captions.jsonl", lines)
    base = {
        "model": str(tiny_model),
        "prompt": "Sum up these clips.",
        "system_prompt": "You are a helpful assistant.",
        "sampling": {"temperature": 0.8, "seed": 0, "max_tokens": 8},
        "max_model_len": 1024,
    }
    engine = {"max_model_len": 1024, "dtype": "float32", "enforce_eager": True, "cpu_kvcache_space_gb": 1}
    summarize_shard(str(captions), str(tmp_path / "offline.jsonl"), {**base, "engine": engine})
    served_engine = {"backend": "server", "url": server, "api_key_env": KEY_ENV}
    served = {**base, "engine": served_engine, "served_name": str(tiny_model)}
    summarize_shard(str(captions), str(tmp_path / "server.jsonl"), served)
    offline, online = (
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("offline.jsonl", "server.jsonl")
    )
    assert online[1] == offline[1] == lines[1]
    assert online[0]["caption"] == offline[0]["caption"] and isinstance(online[0]["caption"], str)
    assert online[0]["caption_meta"]["summary"] == offline[0]["caption_meta"]["summary"]
    assert offline[0]["caption_meta"]["summary"]["output_tokens"] == 8


def test_a_request_without_the_key_fails_the_job(server, tiny_model, shard, tmp_path):
    """No key (or a wrong one): the server's 401 is the engine's failure, not every record's error."""
    out = tmp_path / "nokey.jsonl"
    with pytest.raises(EngineFailure, match="HTTP 401"):
        caption_shard(
            str(shard / "s.jsonl"),
            str(shard / "m.json"),
            str(out),
            settings(tiny_model, backend="server", url=server, api_key_env=None),
        )
    assert not out.exists()


def test_the_key_and_other_secrets_are_in_nothing_the_build_writes(server, tiny_model, tmp_path):
    """A whole build through the server with its key, a token in vllm_args and one in the url's query: the
    key appears in no file of the build (logs, stats, provenance, report, Snakemake's metadata), the
    other two in none of its logs, stats, provenance or report; the records are captioned."""
    make_video(tmp_path / "a.mp4", seconds=1, size="96x64", rate=8)
    write_records(tmp_path / "records.json", [{"video": ["a.mp4"]}, {"video": ["a.mp4"], "id": 2}])
    engine = {
        "backend": "server",
        "url": f"{server}/?tenant=qsecret-77",
        "api_key_env": KEY_ENV,
        "vllm_args": {"hf_token": "hf_secret_5150"},
    }
    config = tiny_config(tiny_model, shards=1, engine=engine)
    run_snakemake(tmp_path, config, gpus=0)
    proc = run_snakemake(tmp_path, config, "--report", "report.html", gpus=0)
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert [c["caption_meta"]["status"] in CAPTIONED for c in captions] == [True, True], captions
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".mp4", ".npy", ".mkv")]
    # the user's own config.yaml holds the two settings as written: everything vidcap wrote must not
    results = [p for p in written if ".snakemake" not in p.parts and p.name != "config.yaml"]
    (provenance_file,) = [p for p in results if "provenance" in p.name and p.suffix == ".json"]
    assert any(p.name.endswith(".stats.json") for p in results) and any(p.suffix == ".log" for p in results)
    assert (tmp_path / "report.html").exists()
    for path in written:
        assert API_KEY.encode() not in path.read_bytes(), path
    for path in results:
        data = path.read_bytes()
        assert b"hf_secret_5150" not in data and b"qsecret-77" not in data, path
    assert API_KEY not in proc.stdout + proc.stderr
    provenance = json.loads(provenance_file.read_text())
    assert provenance["engine"]["api_key_env"] == KEY_ENV
