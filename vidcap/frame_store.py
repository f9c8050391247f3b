"""How one frame-cache file is stored, checked and read back: raw ``.npy`` or a compact video codec.

Raw uint8 frames are ~20x the bytes of the videos they come from (10 public camera and film clips, see
bench/cache_codec.py). ``frames.cache_codec`` picks the file format:

- ``h264`` (default): x264 at CRF :data:`H264_CRF`, 4:4:4 chroma (no chroma is dropped), in Matroska. Not
  lossless: on the bench clips the model's pixels differ from the raw frames by a mean absolute difference
  under 1/255 per clip (docs/media.md has the figures); the cache is under 2x the source bytes.
- ``ffv1``: FFV1 in Matroska, lossless (the same pixels as raw), about 4x the source bytes.
- ``npy``: the raw array (the format of cache version 4), ~20x the source, memory-mapped reads.

Every file has a content record ``{"codec", "shape", "bytes", "blake2b"}`` (in the entry's sidecar and in
the manifest item): a file cut short or zero-filled after a crash (cache files are not fsynced) fails
:func:`is_intact` and is extracted again, never captioned. Encoding reads a raw spool file (the frames as
today's extraction writes them) with ffmpeg, and decoding runs one ffmpeg per file read: memory stays at
one file's frames, what a caption request holds anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import numpy as np

from vidcap import npystream
from vidcap.atomic import atomic_open

CODECS = ("h264", "ffv1", "npy")
FORMAT_VERSION = 5  # the sidecar's layout and the content record; version 4 entries (plain meta) are misses
H264_CRF = 12  # bench/cache_codec.py: 1.87x the source bytes, mean abs diff at most 0.96/255 per clip
LOSSY = {"h264": f"h264-444-crf{H264_CRF}"}  # codecs whose pixels differ: their tag joins the cache key
FFMPEG = "ffmpeg"
_CHUNK = 1 << 20
# the RGB <-> YUV conversion is pinned on both sides (BT.709, full range): no default of either ffmpeg
# decides it, and full range keeps the 8-bit round trip within a level
_TO_YUV = "scale=out_color_matrix=bt709:out_range=full,format=yuv444p"
_COLOR_TAGS = ["-colorspace", "bt709", "-color_range", "pc"]
_ENCODERS = {
    # threads pinned: x264's output depends on its thread count, which would otherwise follow the machine's
    "h264": ["-c:v", "libx264", "-preset", "medium", "-crf", str(H264_CRF), "-threads", "2", "-vf", _TO_YUV]
    + _COLOR_TAGS,
    "ffv1": ["-c:v", "ffv1", "-level", "3", "-slices", "4", "-pix_fmt", "bgr0"],
}
_FROM = {
    "h264": ["-vf", "scale=in_color_matrix=bt709:in_range=full,format=rgb24"],
    "ffv1": [],
}


class CacheEntryError(ValueError):
    """A cache file that does not hold what its content record says (torn, zero-filled, replaced)."""


def suffix(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"frames.cache_codec is {codec!r}; expected one of {', '.join(CODECS)}")
    return ".npy" if codec == "npy" else ".mkv"


def key_tag(codec: str) -> str | None:
    """What joins the frame-cache key: lossy codecs only, so lossless ones share the results of raw frames."""
    return LOSSY.get(codec)


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def content_record(path: str | os.PathLike, codec: str, shape) -> dict:
    size, digest = file_digest(path)
    return {"codec": codec, "shape": [int(s) for s in shape], "bytes": size, "blake2b": digest}


def is_intact(path: str | os.PathLike, content: dict | None) -> bool:
    """The file is the one its content record describes (size, then hash). Without a record (a manifest
    or synthetic entry of raw frames from before version 5), a whole .npy file counts."""
    if content is None:
        return npystream.is_complete(path)
    try:
        if os.path.getsize(path) != content["bytes"]:
            return False
        return file_digest(path)[1] == content["blake2b"]
    except OSError:
        return False


def encode_spool(spool: str | os.PathLike, dest: str | os.PathLike, codec: str) -> dict:
    """Encode a complete raw .npy spool into ``dest`` (written whole, then renamed); its content record.

    ffmpeg reads the spool file itself past the .npy header: the frames never pass through this process.
    """
    with open(spool, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read(handle)
        offset = handle.tell()
    return _encode(["-skip_initial_bytes", str(offset), "-i", "file:" + str(spool)], None, shape, dest, codec)


def encode_array(array: np.ndarray, dest: str | os.PathLike, codec: str) -> dict:
    """Encode frames (T x H x W x 3, or one image H x W x 3) given in memory; its content record."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if codec == "npy":
        with atomic_open(dest, "wb", durable=False) as handle:
            np.save(handle, array)
        return content_record(dest, codec, array.shape)
    return _encode(["-i", "pipe:0"], array.data, array.shape, dest, codec)


def _encode(source: list[str], data, shape, dest, codec: str) -> dict:
    height, width = shape[-3], shape[-2]
    cmd = [
        FFMPEG, "-nostdin" if data is None else "-hide_banner", "-v", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "2", *source,
        # bitexact: no random Matroska UIDs, so extracting again writes the same bytes (content hash)
        *_ENCODERS[codec], "-fflags", "+bitexact", "-f", "matroska", "pipe:1",
    ]  # fmt: skip
    with atomic_open(dest, "wb", durable=False) as handle:
        done = subprocess.run(cmd, input=data, stdout=handle, stderr=subprocess.PIPE, check=False)
        if done.returncode:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise OSError(
                f"encoding the frame cache ({codec}) failed: {message[-1] if message else done.returncode}"
            )
    return content_record(dest, codec, shape)


def read(path: str | os.PathLike, content: dict | None) -> np.ndarray:
    """The frames of one cache file: uint8 T x H x W x 3 (or H x W x 3 for an image).

    Raw files are memory-mapped (read-only); compact ones are decoded whole, after their hash is checked
    on the bytes read, so a file changed since it was checked is an error rather than other pixels.
    """
    codec = (content or {}).get("codec", "npy")
    if codec == "npy":
        return np.load(path, mmap_mode="r")
    data = Path(path).read_bytes()
    if (
        len(data) != content["bytes"]
        or hashlib.blake2b(data, digest_size=16).hexdigest() != content["blake2b"]
    ):
        raise CacheEntryError(f"frame cache file {path} does not match its content record")
    cmd = [FFMPEG, "-hide_banner", "-v", "error", "-f", "matroska", "-i", "pipe:0", *_FROM[codec]]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    shape = tuple(content["shape"])
    frames = np.empty(shape, np.uint8)  # decoded straight into the array the request keeps (writable)
    got, returncode, stderr = _decode_into(cmd, data, memoryview(frames).cast("B"))
    if returncode or got != frames.nbytes:
        raise CacheEntryError(f"frame cache file {path} did not decode to {shape}: {stderr[-200:]}")
    return frames


def _decode_into(cmd: list[str], data: bytes, out: memoryview) -> tuple[int, int, str]:
    """Run ``cmd`` with ``data`` on stdin and its stdout read into ``out``: (bytes read, exit code, stderr)."""
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(data)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()

    threads = [
        threading.Thread(target=feed),
        threading.Thread(target=lambda: errors.append(process.stderr.read())),
    ]
    for thread in threads:
        thread.start()
    got = 0
    try:
        while got < len(out):
            n = process.stdout.readinto(out[got:])
            if not n:
                break
            got += n
        extra = process.stdout.read(1)  # more than the shape holds: not the file its record describes
        got += len(extra)
    finally:
        process.stdout.close()
        process.wait()
        for thread in threads:
            thread.join()
    return got, process.returncode, b"".join(errors).decode("utf-8", "replace").strip()
