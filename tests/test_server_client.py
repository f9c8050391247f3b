"""The server backend's client side without vLLM: the API key from the environment, Retry-After with jitter,
the 4xx/5xx split, and secrets redacted in provenance and the report (the real ``vllm serve`` runs are in
test_server.py)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from vidcap import server
from vidcap.config import load as load_config
from vidcap.provenance import job_provenance
from vidcap.redact import REDACTED, redact_url, redacted_engine
from vidcap.settings import report_settings

openai = pytest.importorskip("openai")  # installed with vLLM


def test_redact_url_hides_password_and_query_values():
    assert redact_url("http://bob:pw1@host:8000/base?token=abc&x=1") == (
        f"http://bob:{REDACTED}@host:8000/base?token={REDACTED}&x={REDACTED}"
    )
    assert redact_url("http://tok123@host:8000") == f"http://{REDACTED}@host:8000"
    assert redact_url("http://localhost:8000") == "http://localhost:8000"


def test_engine_secrets_are_redacted_in_provenance_and_report():
    engine = {
        "backend": "server",
        "url": "http://bob:pw1@host:8000?key=k3y",
        "api_key_env": "MY_KEY",
        "vllm_args": {"hf_token": "hf_abc", "quantization": "fp8", "nested": {"api_key": "x9"}},
        "env": {"HF_TOKEN": "hf_env"},
    }
    shown = redacted_engine(engine)
    assert shown["vllm_args"] == {
        "hf_token": REDACTED,
        "quantization": "fp8",
        "nested": {"api_key": REDACTED},
    }
    assert shown["api_key_env"] == "MY_KEY"  # the variable's name, never its value
    config = load_config(None, {"input": "r.json", "model": "org/a-model", "engine": engine})
    for written in (job_provenance(config, config["engine"], None), report_settings(config)):
        text = json.dumps(written)
        for secret in ("pw1", "k3y", "hf_abc", "x9", "hf_env"):
            assert secret not in text, (secret, written)
        assert "fp8" in text and "MY_KEY" in text


def test_api_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-real-openai-key")
    assert server.api_key({"api_key_env": None}) == "EMPTY"  # the user's OpenAI key is not sent here
    monkeypatch.setenv("VIDCAP_TEST_KEY", "s3cret")
    assert server.api_key({"api_key_env": "VIDCAP_TEST_KEY"}) == "s3cret"
    monkeypatch.delenv("VIDCAP_TEST_KEY")
    with pytest.raises(server.ServerConfigError, match="'VIDCAP_TEST_KEY'.*not set") as err:
        server.api_key({"api_key_env": "VIDCAP_TEST_KEY"})
    assert "s3cret" not in str(err.value)


def test_api_base_keeps_the_query_out_of_the_path():
    assert server.api_base("http://h:1/") == ("http://h:1/v1", {})
    assert server.api_base("http://h:1/proxy?tenant=a") == ("http://h:1/proxy/v1", {"tenant": "a"})


def test_backoff_waits_at_least_what_the_server_asks_plus_jitter():
    assert server.backoff(0, 2.0, rand=lambda: 0.0) == 2.0
    assert server.backoff(0, 2.0, rand=lambda: 1.0) == 2.5
    assert server.backoff(3, None, rand=lambda: 0.5) == 8.0
    assert server.backoff(9, None, rand=lambda: 1.0) == 30.0 * 1.25
    waits = {round(server.backoff(0, 1.0), 6) for _ in range(20)}
    assert len(waits) > 1 and all(1.0 <= w <= 1.25 for w in waits)


def test_retry_after_as_seconds_or_http_date():
    assert server.retry_after({"retry-after": "3"}) == 3.0
    later = time.time() + 30
    from email.utils import formatdate

    assert 25 < server.retry_after({"retry-after": formatdate(later, usegmt=True)}) <= 30
    assert server.retry_after({}) is None and server.retry_after({"retry-after": "soon"}) is None
    assert not server.retryable(429, 600.0) and server.retryable(429, 5.0) and not server.retryable(400, None)


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, headers, body); notes when each came and its headers."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 -- the http.server interface
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, self.path))
        status, headers, body = self.script.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Scripted.script, Scripted.seen = [], []
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _engine(url, **more):
    return {"url": url, "api_key_env": None, "request_timeout": 10, "retries": 2, "concurrency": 1, **more}


def test_retry_after_is_honoured_and_a_4xx_is_the_records_error(scripted, monkeypatch):
    """503 with Retry-After: 1, then a 400: one wait of 1-1.25 s, then ServerError(400) with vLLM's message
    (a record's error, not the engine's); the key went in the Authorization header and the query along."""
    monkeypatch.setenv("VIDCAP_TEST_KEY", "s3cret")
    Scripted.script = [
        (503, {"Retry-After": "1"}, {"error": {"message": "busy"}}),
        (400, {}, {"error": {"message": "prompt too long", "type": "BadRequestError"}}),
    ]
    engine = _engine(scripted + "?tenant=a", api_key_env="VIDCAP_TEST_KEY")
    client = server.make_client(engine)
    with pytest.raises(server.ServerError) as err:
        server.post_chat(client, {"model": "m", "messages": [], "top_k": 3}, 2, engine["url"])
    assert err.value.status == 400 and "prompt too long" in str(err.value)
    (first, headers, path), (second, _, _) = Scripted.seen
    assert 1.0 <= second - first < 1.6
    assert headers["authorization"] == "Bearer s3cret"
    assert path == "/v1/chat/completions?tenant=a"


def test_5xx_after_the_retries_and_no_server_are_engine_level(scripted):
    Scripted.script = [(500, {"Retry-After": "0"}, {"message": "boom"})] * 2
    replies = server.run_bodies(_engine(scripted, retries=1), [{"model": "m", "messages": []}])
    assert isinstance(replies[0], server.ServerError) and replies[0].status == 500
    assert "boom" in str(replies[0]) and len(Scripted.seen) == 2
    closed = _engine("http://bob:pw1@127.0.0.1:9", retries=0)
    (reply,) = server.run_bodies(closed, [{"model": "m", "messages": []}])
    assert reply.status == 0 and "server unreachable" in str(reply) and "pw1" not in str(reply)
