"""Broker messages as ingest input: one message body is one JSON Lines line (CONTRACT section 6).

A micro-batch of messages is parsed like one file whose lines are the bodies in arrival order
(``line`` = 1-based index in the batch); ``LabelMessageSources`` then gives every row the
message's own provenance: ``source_file`` = its label (the broker URI and position, e.g.
``amqp://host:5672/%2F?queue=q#offset=42``), ``source_line`` = its position (the stream
offset; 0 where the broker has none), ``file_index`` = its index in the batch (input order for
conflicts). Dead-letter keys are recomputed from (label, position, body digest), so a message
delivered again (a replayed offset, a redelivery after a crash) gives the same key and is a
duplicate of the dead letter already in the lake, never a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.parse import dead_letter_key


@dataclass(frozen=True)
class MessageSource:
    label: str  # broker URI without credentials, plus the position: ...?queue=q#offset=42
    position: int  # the broker's offset, or 0 where it has none (classic queues)
    digest: str  # SHA-256 of the body (the dead-letter key's content part)

    @classmethod
    def of(cls, label: str, position: int, body: bytes) -> MessageSource:
        return cls(label, int(position), hashlib.sha256(body).hexdigest())


def label_table(table: pa.Table, sources: list[MessageSource], tag: str) -> pa.Table:
    """Rows parsed from a batch (``source_line`` = index + 1) with each message's provenance."""
    if not table.num_rows:
        return table
    index = table["source_line"].combine_chunks().to_numpy(zero_copy_only=False) - 1
    if index.min() < 0 or index.max() >= len(sources):
        raise ValueError(f"batch line numbers {index.min() + 1}..{index.max() + 1} outside 1..{len(sources)}")
    picked = [sources[i] for i in index.tolist()]
    columns = {
        "source_file": pa.array([s.label for s in picked], pa.string()),
        "source_line": pa.array([s.position for s in picked], pa.int64()),
        "file_index": pa.array(index.astype(np.int64)),
    }
    if tag == "dead_letter":
        columns["raw_sha256"] = pa.array([dead_letter_key(s.label, s.position, s.digest.encode()) for s in picked],
                                         pa.string())  # fmt: skip
    for name, values in columns.items():
        at = table.schema.get_field_index(name)
        table = table.set_column(at, table.schema.field(at), values.cast(table.schema.field(at).type))
    return table


class _LabelFn(beam.DoFn):
    def __init__(self, sources, tag: str):
        self.sources, self.tag = sources, tag

    def setup(self):
        self.loaded = self.sources() if callable(self.sources) else self.sources

    def process(self, table: pa.Table):
        yield label_table(table, self.loaded, self.tag)


class LabelMessageSources(beam.PTransform):
    """Staging tables of one tag (``events``, ``usage`` or ``dead_letter``) parsed from a message
    batch -> the same rows with their message's label, position and (dead letters) key.

    Configured with the batch's ``MessageSource`` list (index = line number - 1), or a picklable
    callable that returns it in the workers' ``setup`` (a large batch then does not travel inside
    the pipeline's definition, which Beam pickles and compresses); bounded input.
    """

    def __init__(self, sources, tag: str):
        super().__init__()
        if tag not in ("events", "usage", "dead_letter"):
            raise ValueError(f"unknown tag {tag!r}")
        self.sources, self.tag = (sources if callable(sources) else list(sources)), tag

    def expand(self, tables):
        return tables | "Label" >> beam.ParDo(_LabelFn(self.sources, self.tag))
