"""Sharding, defined once: a key's shard is ``crc32(utf-8 key) % shards``.

Ingest shards rows by ``event_id`` (dedup) and dead letters by ``raw_sha256``; metrics
shards by ``customer_id``. Every stage uses this module, so a key always lands in the
same shard for the same shard count.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa


def shard_ids(ids: pa.Array, shards: int) -> np.ndarray:
    if shards <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    return np.fromiter((zlib.crc32(s.encode("utf-8", "surrogatepass")) % shards for s in ids.to_pylist()),
                       dtype=np.int64, count=len(ids))  # fmt: skip


def split_by_shard(table: pa.Table, key_column: str, shards: int) -> Iterable[tuple[int, pa.Table]]:
    if table.num_rows == 0:
        return
    if shards <= 1:
        yield 0, table
        return
    shard = shard_ids(table.column(key_column).combine_chunks(), shards)
    for s in np.unique(shard):
        yield int(s), table.filter(pa.array(shard == s))
