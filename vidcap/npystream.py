"""A .npy file written frame by frame, so a video's frames never sit in memory all at once."""

from __future__ import annotations

import numpy as np


class NpyStream:
    """Writes a uint8 .npy array frame by frame, in order: memory stays at one frame."""

    def __init__(self, handle):
        self.handle = handle
        self.shape = None
        self.written = 0

    def start(self, shape: tuple) -> NpyStream:
        self.shape = tuple(shape)
        header = {"descr": "|u1", "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.handle, header)
        return self

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
