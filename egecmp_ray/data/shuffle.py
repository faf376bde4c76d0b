"""Which Ray Data shuffle an aggregation (``groupby``) runs on.

Ray 2.60's default shuffle (``SHUFFLE_V2``: hash partitioning through aggregator actors) starts
its actors for every ``groupby``, a fixed cost of seconds whatever the data: the preprocess
counts over 12k rows took 4.2-6.0 s with it and 1.5-1.7 s with the sort-based pull shuffle,
which runs as plain tasks (measured on 2 cores, 3 logical CPUs). The pull shuffle makes one
object per input block and partition, so it is used only while that product stays small;
above it the actors' streaming aggregation is the one that scales.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

# Map-output objects (input blocks x partitions) up to which the task-based shuffle is used:
# the object store tracks that many small objects without strain (a shuffle at 100M rows, ~50k
# blocks, is far above it and keeps Ray's default).
SMALL_SHUFFLE_OBJECTS = 100_000


@contextlib.contextmanager
def shuffle_for(blocks: int, partitions: int) -> Iterator[str]:
    """Within the block: the shuffle for a ``groupby`` of ``blocks`` input blocks into
    ``partitions``. Build *and* execute the dataset inside (Ray Data reads the strategy from
    the current context). Yields the strategy's name (for the log)."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    before = ctx.shuffle_strategy
    if blocks * partitions <= SMALL_SHUFFLE_OBJECTS:
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield ShuffleStrategy(ctx.shuffle_strategy).value
    finally:
        ctx.shuffle_strategy = before
