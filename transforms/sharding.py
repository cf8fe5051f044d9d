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
import pyarrow.compute as pc

SAMPLE_ROWS = 4096


def _crc_shards(values: list[str], shards: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(s.encode("utf-8", "surrogatepass")) % shards for s in values),
                       dtype=np.int64, count=len(values))  # fmt: skip


def shard_ids(ids: pa.Array, shards: int) -> np.ndarray:
    if shards <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    # mostly distinct keys (event ids): hash each row; judged on a sample, as encoding a million
    # distinct ids costs more than hashing them (either way gives the same shards)
    sample = ids.slice(0, SAMPLE_ROWS)
    if pc.count_distinct(sample).as_py() * 2 > len(sample):
        return _crc_shards(ids.to_pylist(), shards)
    encoded = pc.dictionary_encode(ids)
    # repeated keys (customer ids): hash each distinct key once
    per_key = _crc_shards(encoded.dictionary.to_pylist(), shards)
    return per_key[encoded.indices.to_numpy(zero_copy_only=False)]


def split_by_shard(table: pa.Table, key_column: str, shards: int) -> Iterable[tuple[int, pa.Table]]:
    if table.num_rows == 0:
        return
    if shards <= 1:
        yield 0, table
        return
    shard = shard_ids(table.column(key_column).combine_chunks(), shards)
    # one stable sort by shard and one take, then slices: not one filter of the whole table per shard
    # (rows keep their order within a shard either way)
    order = np.argsort(shard, kind="stable")
    shard = shard[order]
    table = table.take(pa.array(order))  # on the chunks as they are: combining them first cost more
    del order
    starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]])
    for start, end in zip(starts.tolist(), np.r_[starts[1:], len(shard)].tolist(), strict=True):
        yield int(shard[start]), table.slice(start, end - start)
