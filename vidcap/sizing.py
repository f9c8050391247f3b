"""How many shards a build should have: the rule docs/sizing.md explains, in one function.

A shard is one frames job and one caption job. Each caption job starts an engine (a minute or two for a
7B model on a GPU), so a shard must hold enough records to make that small, and a job should be short
enough that a cluster time limit or a preemption costs little (the result store keeps every answer, so
a retried job redoes nothing it finished, but its engine start is paid again); the GPUs need a few shards
each so that the last shards do not leave the others idle; and every snakemake command plans every job
(about a millisecond each), so the count stays in the hundreds to low thousands.
"""

from __future__ import annotations

import math

JOB_MINUTES = 30  # a caption job's aim: engine start a few percent of it, a lost job cheap to redo
DEFAULT_RATE = 1.0  # records/s per GPU when no pilot measured it (7B on short clips: ~0.5-5)
MIN_RECORDS_PER_SHARD = 200  # below this the engine start outweighs the captioning
SHARDS_PER_GPU = 4  # at least, when the records allow: the last shards overlap instead of queueing
MAX_SHARDS = 2000  # planning stays a few seconds per snakemake command


def records_per_shard(rate: float = DEFAULT_RATE) -> int:
    """Records a caption job gets through in JOB_MINUTES at ``rate`` records/s (at least the minimum)."""
    return max(MIN_RECORDS_PER_SHARD, round(rate * JOB_MINUTES * 60))


def suggest_shards(records: int, gpus: int = 1, rate: float = DEFAULT_RATE) -> int:
    """The shard count for ``records`` records on ``gpus`` GPUs captioning ``rate`` records/s each."""
    if records <= 0:
        return 1
    shards = math.ceil(records / records_per_shard(rate))
    shards = max(shards, min(SHARDS_PER_GPU * max(gpus, 1), records // MIN_RECORDS_PER_SHARD))
    return max(1, min(shards, MAX_SHARDS))
