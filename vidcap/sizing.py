"""How many shards a build should have: the rule docs/sizing.md explains, in one function.

A shard is one frames job and one caption job. Each caption job starts an engine (about a minute for a
7B model on a GPU), so a shard must hold enough records to make that small; a failed or retried job
redoes at most its shard's unstored work and a job's wall time should stay well under a cluster time
limit, so a shard must not be huge; the GPUs need a few shards each so one slow shard does not leave
the others idle at the end; and planning costs about a millisecond per job on every snakemake command.
"""

from __future__ import annotations

import math

RECORDS_PER_SHARD = 1000  # the aim: ~15-30 min of captioning per job at 0.5-1 video/s/GPU
MIN_RECORDS_PER_SHARD = 200  # below this the engine start outweighs the captioning
SHARDS_PER_GPU = 4  # at least, when the records allow: the last shards overlap instead of queueing
MAX_SHARDS = 2000  # planning stays a few seconds per snakemake command


def suggest_shards(records: int, gpus: int = 1) -> int:
    """The shard count for ``records`` records on ``gpus`` GPUs (each shard then holds ~200-2000)."""
    if records <= 0:
        return 1
    shards = math.ceil(records / RECORDS_PER_SHARD)
    shards = max(shards, min(SHARDS_PER_GPU * max(gpus, 1), records // MIN_RECORDS_PER_SHARD))
    return max(1, min(shards, MAX_SHARDS))
