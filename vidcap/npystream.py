"""A .npy file written frame by frame, so a video's frames never sit in memory all at once."""

from __future__ import annotations

import io
import os

import numpy as np

# np.lib.format's header (version 1.0, padded to 64 bytes) of a 4-D uint8 shape with sides below
# 10^10; start(direct=True) checks it
HEADER_BYTES = 128


class NpyStream:
    """Writes a uint8 .npy array frame by frame, in order: memory stays at one frame.

    Or another process writes the frames into the file (an ffmpeg started before the shape is known):
    ``skip_header`` leaves room for the header, ``start(shape, direct=True)`` fills it in and
    ``advance`` counts the frames written.
    """

    def __init__(self, handle):
        self.handle = handle
        self.shape = None
        self.written = 0
        self.direct = False

    def skip_header(self):
        """The file, positioned where the first frame goes, for another writer."""
        self.handle.flush()
        self.handle.seek(HEADER_BYTES)
        self.direct = True
        return self.handle

    def start(self, shape: tuple, direct: bool = False) -> NpyStream:
        self.shape = tuple(shape)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": self.shape}
        )
        if direct:
            if not self.direct or len(header.getvalue()) != HEADER_BYTES:
                raise ValueError(f"no room for the header of an array of {self.shape}")
            os.pwrite(self.handle.fileno(), header.getvalue(), 0)
        else:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(header.getvalue())
        return self

    def advance(self, frames: int) -> None:
        """``frames`` more frames were written into the file by another process."""
        self.written += frames

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape[1:]:
            raise ValueError(f"frame of shape {frame.shape} for an array of {self.shape}")
        self.handle.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
        self.written += 1

    def reset(self) -> None:
        """Start over (the frames are sampled again): back to an empty file."""
        self.handle.seek(0)
        self.handle.truncate()
        self.shape, self.written = None, 0

    def finish(self) -> None:
        if self.shape is None or self.written != self.shape[0]:
            raise ValueError(f"{self.written} frames written for an array of {self.shape}")


def is_complete(path) -> bool:
    """The file holds a whole .npy array: its header reads and its size is the header's shape.

    Frame cache files are written without fsync (frames.cached_sample), so after a power loss a
    renamed file can be empty or short; this tells such a file from a good one without reading it.
    """
    try:
        with open(path, "rb") as handle:
            fmt = np.lib.format
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(handle)
            expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            return os.fstat(handle.fileno()).st_size == expected
    except (OSError, ValueError):
        return False
