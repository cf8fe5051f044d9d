"""Shard assignment is ``crc32(utf-8 key) % shards`` whichever way it is computed."""

from __future__ import annotations

import zlib

import pyarrow as pa
import pytest

from transforms.sharding import SAMPLE_ROWS, shard_ids, split_by_shard


def expected(keys: list[str], shards: int) -> list[int]:
    return [zlib.crc32(k.encode("utf-8")) % shards for k in keys]


@pytest.mark.parametrize(
    "keys",
    [
        [f"evt_{i}" for i in range(3 * SAMPLE_ROWS)],  # distinct: hashed per row
        [f"cus_{i % 7}" for i in range(3 * SAMPLE_ROWS)],  # repeated: hashed per distinct key
        [f"evt_{i}" for i in range(SAMPLE_ROWS)] + ["cus_1"] * (5 * SAMPLE_ROWS),  # the sample misjudges: same shards
        ["", "é", "\U0001f600", "x" * 300],
    ],
    ids=["distinct", "repeated", "misleading_sample", "odd"],
)
def test_shards_are_crc32_of_the_utf8_key(keys):
    for shards in (1, 3, 64):
        got = shard_ids(pa.array(keys, pa.string()), shards).tolist()
        assert got == (expected(keys, shards) if shards > 1 else [0] * len(keys))


def test_split_by_shard_keeps_every_row_once():
    keys = [f"evt_{i}" for i in range(1000)]
    table = pa.table({"event_id": keys, "n": list(range(1000))})
    parts = dict(split_by_shard(table, "event_id", 5))
    assert sorted(n for part in parts.values() for n in part["n"].to_pylist()) == list(range(1000))
    for shard, part in parts.items():
        assert set(expected(part["event_id"].to_pylist(), 5)) == {shard}


def test_split_by_shard_keeps_input_order_within_a_shard():
    keys = [f"evt_{i % 300}" for i in range(2000)]  # repeated keys spread over chunks
    table = pa.concat_tables([pa.table({"event_id": keys[k:k + 500], "n": list(range(k, k + 500))})
                              for k in range(0, 2000, 500)])  # fmt: skip
    parts = list(split_by_shard(table, "event_id", 7))
    assert [shard for shard, _ in parts] == sorted({shard for shard, _ in parts})  # each shard once
    for shard, part in parts:
        want = [n for n, k in enumerate(keys) if zlib.crc32(k.encode()) % 7 == shard]
        assert part["n"].to_pylist() == want
