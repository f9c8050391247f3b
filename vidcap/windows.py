"""Long videos in windows: which time spans of a video are captioned as requests of their own.

Pure arithmetic on seconds, no decoding. As cosmos-curate and NeMo Curator, a window is
``window_frames`` frames at the sampling fps (256 at 2 fps: 128 s) and a remainder under
``min_window_frames`` joins the previous window. With shot cuts, each inner edge moves to the nearest
cut within half a window, so a window rarely starts or ends in the middle of a shot.
"""

from __future__ import annotations

import math

EPS = 1e-6


def window_seconds(fps: float, window_frames: int) -> float:
    return window_frames / fps


def is_long(duration: float, fps: float, window_frames: int) -> bool:
    """More than one window at the sampling fps (what ``long_video.mode: auto`` windows)."""
    return duration * fps > window_frames + EPS


def nominal_edges(duration: float, fps: float, window_frames: int, min_window_frames: int) -> list[float]:
    """Inner window edges at multiples of a window; a remainder under min_window_frames joins the last."""
    span = window_seconds(fps, window_frames)
    full = math.floor(duration / span + EPS)
    edges = [k * span for k in range(1, full + 1) if k * span < duration - EPS]
    if edges and (duration - edges[-1]) * fps < min_window_frames - EPS:
        edges.pop()  # the remainder joins the previous window
    return edges


def snap_to_cuts(edges: list[float], cuts: list[float], reach: float) -> list[float]:
    """Each edge moved to the nearest cut within ``reach`` seconds; edges that meet are merged."""
    snapped = []
    for edge in edges:
        near = [c for c in cuts if abs(c - edge) <= reach + EPS]
        best = min(near, key=lambda c: (abs(c - edge), c)) if near else edge
        if not snapped or best > snapped[-1] + EPS:
            snapped.append(best)
    return snapped


def plan_windows(
    duration: float,
    fps: float,
    window_frames: int,
    min_window_frames: int,
    cuts: list[float] | None = None,
    shots: bool = False,
) -> list[tuple[float, float]]:
    """Contiguous ``[start, end)`` spans covering ``[0, duration)``, in time order.

    ``cuts``: shot cut times in seconds (used with ``shots``). A video of one window or less is one span.
    """
    if duration <= 0:
        return [(0.0, max(duration, 0.0))]
    edges = nominal_edges(duration, fps, window_frames, min_window_frames)
    if shots and cuts:
        reach = window_seconds(fps, window_frames) / 2
        edges = [e for e in snap_to_cuts(edges, sorted(cuts), reach) if EPS < e < duration - EPS]
    bounds = [0.0, *edges, duration]
    return [(round(a, 6), round(b, 6)) for a, b in zip(bounds, bounds[1:])]


def clip_phrase(start: float, end: float) -> str:
    """How a window's time range is stated in its prompt."""
    return f"This is a clip from {start:.1f} s to {end:.1f} s of a longer video."
