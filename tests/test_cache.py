"""The frame cache: keyed by the real file and the frame settings."""

import os

from helpers import make_video

from vidcap.frames import cached_sample

PARAMS = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 3136, "max_pixels": 12544}


def test_links_and_copies(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=1)
    os.symlink(video, tmp_path / "link.mp4")
    cache = tmp_path / "cache"
    first = cached_sample(str(video), "video", PARAMS, cache)
    linked = cached_sample(str(tmp_path / "link.mp4"), "video", PARAMS, cache)
    assert not first["cached"] and linked["cached"] and linked["frames"] == first["frames"]

    other = cached_sample(str(video), "video", {**PARAMS, "max_frames": 4}, cache)
    assert not other["cached"] and other["frames"] != first["frames"]  # new settings, new frames

    os.utime(video, ns=(0, 10**18))  # the file changed (mtime): extracted again
    assert not cached_sample(str(video), "video", PARAMS, cache)["cached"]
