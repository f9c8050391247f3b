"""``vidcap cache prune``: remove what the current build's output does not use.

Three kinds of files, all under the build's ``results`` folder:

- frame-cache entries (``frames/cache/xx/KEY.{mkv,npy}`` + ``KEY.json``, window files ``KEY-wNNN.*`` and a
  windowed video's ``KEY.json``) that no frames manifest of the build's shards (``frames/NNNN.json``) names:
  entries of old frame settings, of videos no longer in the input, of cache version 4;
- result-store entries (``store/xx/KEY.json``) whose key no caption or summary result of the build's shards
  (``captions/NNNN.jsonl``, ``summaries/NNNN.jsonl``, their ``keys`` field) lists;
- temporary files of killed jobs (``.*.tmp`` of vidcap.atomic, raw spools of the frame cache, windowed
  videos' ``.KEY-*`` spool folders) older than ``min_age`` seconds, so a running build's are left alone.

What a manifest or result of the current shards references is never removed. Run it after a finished
build: store entries of a shard whose caption job was killed before it wrote its results are not referenced
yet and would be asked again. A dry run (the default) only counts.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidcap.atomic import iter_jsonl, read_json
from vidcap.shards import shard_ids

DEFAULT_MIN_AGE = 3600.0  # seconds: a temporary file younger than this may belong to a running job


@dataclass
class Plan:
    """What prune would remove (paths) and keep (counts and bytes), per kind."""

    remove: dict[str, list[Path]] = field(default_factory=lambda: {"frames": [], "store": [], "temp": []})
    kept: dict[str, list[int]] = field(default_factory=lambda: {"frames": [0, 0], "store": [0, 0]})

    def removed_bytes(self, kind: str) -> int:
        return sum(_size(p) for p in self.remove[kind])


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.lstat().st_size
    except OSError:
        return 0


def referenced_frames(results: Path, shards: list[str]) -> set[str]:
    """Names (no folder) of the frame-cache files the shards' manifests use, with their sidecars."""
    names: set[str] = set()
    for sid in shards:
        try:
            manifest = read_json(results / "frames" / f"{sid}.json")
        except (OSError, ValueError):
            continue
        for entry in manifest.get("records", []):
            for item in (entry.get("videos") or []) + (entry.get("images") or []):
                for frames in _frame_files(item or {}):
                    name = Path(frames).name
                    stem = Path(frames).stem
                    names.update({name, f"{stem}.json"})
                    if "-w" in stem:  # a window's file: its video's item (KEY.json) too
                        names.add(f"{stem.rsplit('-w', 1)[0]}.json")
    return names


def _frame_files(item: dict) -> list[str]:
    parts = [item] + list(item.get("windows") or [])
    files = [p["frames"] for p in parts if p.get("frames")]
    # audio.mode native: each part's cached audio (KEY.audio.npy and its KEY.audio.json) is in use too
    return files + [p["audio"]["file"] for p in parts if (p.get("audio") or {}).get("file")]


def referenced_store_keys(results: Path, shards: list[str]) -> set[str]:
    keys: set[str] = set()
    for sid in shards:
        for path in (results / "captions" / f"{sid}.jsonl", results / "summaries" / f"{sid}.jsonl"):
            if path.exists():
                for result in iter_jsonl(path):
                    keys.update(result.get("keys") or [])
    return keys


def plan_prune(results: str | os.PathLike, n_shards: int, min_age: float = DEFAULT_MIN_AGE) -> Plan:
    results = Path(results)
    shards = shard_ids(n_shards)
    plan = Plan()
    cutoff = time.time() - min_age
    frames_used = referenced_frames(results, shards)
    _sort(results / "frames" / "cache", lambda p: p.name in frames_used, "frames", plan, cutoff)
    keys_used = referenced_store_keys(results, shards)
    _sort(results / "store", lambda p: p.suffix == ".json" and p.stem in keys_used, "store", plan, cutoff)
    seen = set(plan.remove["temp"])
    for tmp in sorted(results.rglob(".*.tmp")):  # atomic's temp files elsewhere (shards, manifests, outputs)
        inside = any(parent in seen for parent in tmp.parents)  # in a spool folder already listed
        if tmp not in seen and not inside and _older(tmp, cutoff):
            plan.remove["temp"].append(tmp)
    return plan


def _sort(root: Path, used, kind: str, plan: Plan, cutoff: float) -> None:
    """Files two levels down (root/xx/name): used ones kept, hidden ones temp (when old), others removed."""
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):  # a temp file, a spool or a windowed video's spool folder
                if _older(path, cutoff):
                    plan.remove["temp"].append(path)
            elif used(path):
                plan.kept[kind][0] += 1
                plan.kept[kind][1] += _size(path)
            else:
                plan.remove[kind].append(path)


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except OSError:
        return False


def apply(plan: Plan) -> None:
    for paths in plan.remove.values():
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def format_plan(plan: Plan, applied: bool) -> str:
    verb = "removed" if applied else "would remove"
    lines = []
    for kind, label in (("frames", "frame cache"), ("store", "result store")):
        files, size = plan.kept[kind]
        gone = plan.remove[kind]
        lines.append(
            f"{label}: {verb} {len(gone)} files ({_mb(plan.removed_bytes(kind))}), "
            f"kept {files} files ({_mb(size)}) the output uses"
        )
    temp = plan.remove["temp"]
    lines.append(f"temporary files of killed jobs: {verb} {len(temp)} ({_mb(plan.removed_bytes('temp'))})")
    if not applied:
        lines.append("dry run: nothing removed; add --apply to remove")
    return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cache_sizes(results: str | os.PathLike) -> dict:
    """Bytes and files of the frame cache and the result store, for stats and the report."""
    from vidcap.frames import disk_usage

    results = Path(results)
    frame_files, frame_bytes = disk_usage(results / "frames" / "cache")
    store_files, store_bytes = disk_usage(results / "store")
    return {
        "frame_cache_files": frame_files,
        "frame_cache_bytes": frame_bytes,
        "store_files": store_files,
        "store_bytes": store_bytes,
    }
