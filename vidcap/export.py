"""Trainer-ready copies of a finished build's output: ``python -m vidcap export OUTPUT --to FORMAT``.

Every exported row is one caption pair: the prompt the model was asked, with one media placeholder per
image and video in front of it, and the caption as the answer (two turns, user first). The formats:

- ``llamafactory``: LLaMA-Factory's sharegpt format (``conversations`` of ``from``/``value`` turns,
  ``videos``/``images`` lists, ``<video>``/``<image>`` placeholders), JSONL;
- ``swift``: ms-swift's standard format (``messages`` of ``role``/``content`` turns, ``videos``/``images``),
  JSONL;
- ``llava-video``: LLaVA-Video's training JSON (LLaVA-NeXT: one ``video`` path, ``conversations``
  with ``<image>`` as the video's placeholder), a JSON array as its loader reads one;
- ``parquet``: the ``llamafactory`` rows in one Parquet file (pyarrow), which HF ``datasets`` streams and
  LLaMA-Factory also loads.

Each row also holds ``id`` (the record's index in the output) and ``caption_meta`` with the same keys on
every row (a key some records lack is null there). Error records are left out unless asked for.
Both passes stream the output, so memory stays bounded by one record (Parquet: one batch).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vidcap.atomic import atomic_open
from vidcap.config import with_defaults
from vidcap.records import RecordWriter, media_list, resolve_media
from vidcap.stats import iter_output

FORMATS = ("llamafactory", "swift", "llava-video", "parquet")
SUFFIX = {"llamafactory": ".jsonl", "swift": ".jsonl", "llava-video": ".json", "parquet": ".parquet"}
VIDEO_TAG, IMAGE_TAG = "<video>", "<image>"
PARQUET_BATCH = 1000


@dataclass
class ExportResult:
    path: Path
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> records


def default_destination(output_path: str | os.PathLike, fmt: str) -> Path:
    """``captions.jsonl`` -> ``captions.llamafactory.jsonl`` beside it."""
    path = Path(output_path)
    stem = path.name.split(".")[0]
    return path.with_name(f"{stem}.{fmt}{SUFFIX[fmt]}")


def export(
    output_path: str | os.PathLike,
    fmt: str,
    destination: str | os.PathLike | None = None,
    keys: dict | None = None,
    keep_errors: bool = False,
    media_root: str | os.PathLike | None = None,
) -> ExportResult:
    """Write ``output_path``'s records in format ``fmt``; returns how many were written and skipped why.

    ``media_root``: write media paths absolute, relative ones taken from there (the build's media root);
    None keeps them as the records have them (a trainer then takes them from its own media folder).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    keys = with_defaults("keys", keys)
    result = ExportResult(Path(destination) if destination else default_destination(output_path, fmt))
    if result.path.resolve() == Path(output_path).resolve():
        raise ValueError(f"{result.path}: the export would replace the output it reads; name another file")
    meta_keys = meta_key_kinds(output_path, keep_errors)
    rows = iter_rows(output_path, fmt, keys, keep_errors, meta_keys, result.skipped, media_root)
    if fmt == "parquet":
        result.written = write_parquet(rows, result.path, meta_keys)
    else:
        with RecordWriter(result.path) as writer:
            for row in rows:
                writer.write(row)
        result.written = writer.count
    return result


def meta_key_kinds(output_path, keep_errors: bool) -> dict[str, str | None]:
    """Every ``caption_meta`` key of the exported records, in first-seen order, with the kind of its values:
    bool, int, float, str, or json (nested values, or kinds that differ between records)."""
    kinds: dict[str, str | None] = {"status": None, "error": None}  # there even if nothing is exported
    for _, record in iter_output(output_path):
        meta = record.get("caption_meta") or {}
        if not keep_errors and meta.get("status") == "error":
            continue
        for key, value in meta.items():
            kinds[key] = _joined_kind(kinds.get(key), _kind(value))
    return kinds


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, str)):
        return type(value).__name__
    return "json"


def _joined_kind(seen: str | None, new: str | None) -> str | None:
    if seen is None or seen == new:
        return new if new is not None else seen
    if new is None:
        return seen
    return "float" if {seen, new} == {"int", "float"} else "json"


def iter_rows(
    output_path, fmt: str, keys: dict, keep_errors: bool, meta_keys: dict, skipped: Counter, media_root=None
):
    build = {"llamafactory": sharegpt_row, "parquet": sharegpt_row, "swift": swift_row}.get(fmt, llava_row)
    for index, record in iter_output(output_path):
        meta = record.get("caption_meta") or {}
        if not keep_errors and meta.get("status") == "error":
            skipped["error record (--keep-errors keeps them)"] += 1
            continue
        pair = caption_pair(record, keys)
        if media_root is not None:
            pair.videos = [os.path.abspath(resolve_media(p, media_root)) for p in pair.videos]
            pair.images = [os.path.abspath(resolve_media(p, media_root)) for p in pair.images]
        row = build(index, pair)
        if isinstance(row, str):  # the format cannot hold this record: the reason
            skipped[row] += 1
            continue
        row["caption_meta"] = {key: meta.get(key) for key in meta_keys}
        yield row


@dataclass
class CaptionPair:
    prompt: str  # the prompt as asked, placeholders not yet added
    caption: str  # "" for a kept error record
    videos: list[str]
    images: list[str]


def caption_pair(record: dict, keys: dict) -> CaptionPair:
    """The prompt vidcap asked (the output's first human turn) and the caption it got."""
    prompt = ""
    for turn in record.get(keys["conversation"]) or []:
        if turn.get("from") in ("human", "user"):
            prompt = str(turn.get("value") or "")
            break
    caption = record.get(keys["caption"])
    return CaptionPair(
        prompt,
        "" if caption is None else str(caption),
        media_list(record, keys["video"]),
        media_list(record, keys["image"]),
    )


def with_placeholders(prompt: str, images: int, videos: int, image_tag: str, video_tag: str) -> str | None:
    """``prompt`` with one placeholder per image and video in front, in the order vidcap sends them
    (images, then videos); kept as it is if it already holds exactly those; None if it holds others."""
    have_images, have_videos = prompt.count(image_tag), prompt.count(video_tag)
    if image_tag == video_tag:
        if have_images == images + videos:
            return prompt
        if have_images:
            return None
    elif (have_images, have_videos) == (images, videos):
        return prompt
    elif have_images or have_videos:
        return None
    return image_tag * images + video_tag * videos + prompt


PLACEHOLDER_MISMATCH = "prompt already holds media placeholders that do not match the record's media"


def sharegpt_row(index: int, pair: CaptionPair) -> dict | str:
    """LLaMA-Factory sharegpt (data/README.md "Sharegpt Format"; videos as in data/mllm_video_demo.json):
    user turns odd, assistant turns even, an even count."""
    prompt = with_placeholders(pair.prompt, len(pair.images), len(pair.videos), IMAGE_TAG, VIDEO_TAG)
    if prompt is None:
        return PLACEHOLDER_MISMATCH
    return {
        "id": index,
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": pair.caption}],
        "videos": pair.videos,
        "images": pair.images,
    }


def swift_row(index: int, pair: CaptionPair) -> dict | str:
    """ms-swift's standard format (docs/source_en/Customization/Custom-dataset.md, "Multimodal")."""
    prompt = with_placeholders(pair.prompt, len(pair.images), len(pair.videos), IMAGE_TAG, VIDEO_TAG)
    if prompt is None:
        return PLACEHOLDER_MISMATCH
    row = {
        "id": index,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": pair.caption}],
    }
    if pair.videos:
        row["videos"] = pair.videos
    if pair.images:
        row["images"] = pair.images
    return row


def llava_row(index: int, pair: CaptionPair) -> dict | str:
    """LLaVA-Video (LLaVA-NeXT llava/train/train.py, LazySupervisedDataset): ``video`` is one path joined
    to --video_folder, and the human turn carries DEFAULT_IMAGE_TOKEN "<image>" for it."""
    if len(pair.videos) > 1 or (pair.videos and pair.images):
        return "LLaVA-Video takes one video, or images, per record"
    count = len(pair.videos) + len(pair.images)
    # a prompt written for LLaMA-Factory or ms-swift places its video with <video>: LLaVA's tag is <image>
    prompt = with_placeholders(pair.prompt.replace(VIDEO_TAG, IMAGE_TAG), count, 0, IMAGE_TAG, IMAGE_TAG)
    if prompt is None:
        return PLACEHOLDER_MISMATCH
    if prompt.startswith(IMAGE_TAG * count) and not prompt.startswith(IMAGE_TAG * count + "\n"):
        prompt = IMAGE_TAG * count + "\n" + prompt[len(IMAGE_TAG) * count :]  # LLaVA's own layout
    row: dict = {"id": index}
    if pair.videos:
        row["video"] = pair.videos[0]
    else:
        row["image"] = pair.images[0] if len(pair.images) == 1 else pair.images
    row["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": pair.caption}]
    return row


def parquet_schema(meta_keys: dict[str, str]):
    import pyarrow as pa

    arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    meta = pa.struct([(key, arrow.get(kind, pa.string())) for key, kind in meta_keys.items()])
    return pa.schema(
        [
            ("id", pa.int64()),
            ("conversations", pa.list_(turn)),
            ("videos", pa.list_(pa.string())),
            ("images", pa.list_(pa.string())),
            ("caption_meta", meta),
        ]
    )


def parquet_meta(meta: dict, meta_keys: dict[str, str]) -> dict:
    """Values of mixed or nested kinds as JSON text: one column type for every row."""
    out = {}
    for key, kind in meta_keys.items():
        value = meta.get(key)
        if kind == "json" and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        elif kind == "float" and value is not None:
            value = float(value)
        out[key] = value
    return out


def write_parquet(rows: Iterator[dict], path: Path, meta_keys: dict[str, str]) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install pyarrow") from None
    schema = parquet_schema(meta_keys)
    count, batch = 0, []
    with atomic_open(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for row in rows:
            row["caption_meta"] = parquet_meta(row["caption_meta"], meta_keys)
            batch.append(row)
            if len(batch) == PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema))
                count, batch = count + len(batch), []
        if batch or not count:  # an empty export is still a readable file with its columns
            writer.write_table(pa.Table.from_pylist(batch, schema))
            count += len(batch)
    return count


def llamafactory_dataset_info(path: Path, name: str = "vidcap_captions") -> dict:
    """The dataset_info.json entry that makes LLaMA-Factory read an ``llamafactory`` or ``parquet`` export."""
    return {
        name: {
            "file_name": str(path),
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "videos": "videos", "images": "images"},
        }
    }


def format_result(result: ExportResult, fmt: str) -> str:
    lines = [f"wrote {result.written} records to {result.path}"]
    for reason, count in result.skipped.most_common():
        lines.append(f"  left out {count}: {reason}")
    if fmt in ("llamafactory", "parquet"):
        lines.append("LLaMA-Factory dataset_info.json entry:")
        lines.append(json.dumps(llamafactory_dataset_info(result.path.resolve()), indent=2))
    return "\n".join(lines)
