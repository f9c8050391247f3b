import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vidcap first
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# model-folder hashes (vidcap.provenance) cached per test session, not in the user's ~/.cache
os.environ.setdefault("VIDCAP_CACHE_DIR", tempfile.mkdtemp(prefix="vidcap-cache-"))


def _build_tiny(tmp_path_factory, arch: str) -> Path:
    from helpers import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2-VL checkpoint, built once per session (captions are gibberish)."""
    return _build_tiny(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_model_25(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2.5-VL checkpoint, built once per session."""
    return _build_tiny(tmp_path_factory, "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_model_3(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen3-VL checkpoint, built once per session."""
    return _build_tiny(tmp_path_factory, "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_server(tiny_model, tmp_path_factory):
    """A real ``vllm serve`` of the tiny Qwen2-VL (context 1024, an API key) shared by every test that uses
    engine.backend server, so their caption jobs start no engine of their own (gibberish captions). Jobs
    find the key in the environment, under the name engine.api_key_env gives (helpers.SERVER_KEY_ENV)."""
    from helpers import SERVER_API_KEY, SERVER_KEY_ENV, vllm_server

    os.environ[SERVER_KEY_ENV] = SERVER_API_KEY  # inherited by Snakemake and its jobs
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    try:
        with vllm_server(tiny_model, log, api_key=SERVER_API_KEY) as url:
            yield url
    finally:
        os.environ.pop(SERVER_KEY_ENV, None)
