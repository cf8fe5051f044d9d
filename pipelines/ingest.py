"""`revenue ingest`: JSON Lines -> the lake's events/, usage/ and dead_letter/ tables.

    ListFiles -> ReadEventFiles -> ParseEventLines -> SpillToStaging(shard)
      -> GroupByShard -> DeduplicateShard (lookups in the lake's committed tables, pinned versions)
      -> GroupByTableMonth -> WritePartitions (data files into the Delta tables' folders, uncommitted)
    then, in the driver: check conservation, one Delta commit per table, write the manifest.

Scratch files (``_staging/<run>/``) and data files live in the lake's store (a local folder or an
object store, ``pipelines.store``): workers share nothing else. Input files are read locally.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines import lake
from pipelines.beam_options import pipeline_options
from pipelines.config import PII_KEY_ENV, RunConfig, discover_input, input_json_bytes
from pipelines.layout import DataLayout
from pipelines.manifest import new_run_id, write_manifest
from pipelines.store import LakeStore
from transforms.concurrency import OrderedWorker
from transforms.errors import InputError, RevenueError
from transforms.ingest import TAGS, LineChunk, ParseEventLines, ReadEventFiles, dedup_shard, empty_staging
from transforms.messages import LabelMessageSources, MessageSource
from transforms.redact import PiiPolicy
from transforms.sharding import split_by_shard

log = logging.getLogger(__name__)

SHARD_INPUT_BYTES = 64 << 20  # about 250k events of JSON per dedup shard: bounds memory
MAX_SHARDS = 64
INGEST_TABLES = ("events", "usage", "dead_letter")  # committed in this order
# A stream batch writes one small file per partition it touches; once a partition holds this many
# small files, the batch merges them (every later lookup and read opens each file: see ingest_batch)
STREAM_COMPACT_MIN_FILES = 4
STREAM_COMPACT_TARGET_BYTES = 16 << 20  # bigger files are left to `revenue maintain`
# a batch merges at most about this many times the files it wrote to a table (more than the
# steady state needs), so partitions that reach the threshold together are merged over a few
# batches instead of all in one
STREAM_COMPACT_BUDGET = 2


@dataclass
class IngestResult:
    run_id: str
    lines_read: int
    events_written: int
    usage_written: int
    duplicates: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    files: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    lake_versions: dict[str, int] = field(default_factory=dict)
    emails_not_stored: int = 0
    compacted: dict[str, dict] = field(default_factory=dict)  # stream batches: small files merged, per table

    @property
    def rows_written(self) -> int:
        return self.events_written + self.usage_written

    def counts(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "rows_written": self.rows_written,
            "events_written": self.events_written,
            "usage_written": self.usage_written,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "dead_letters_by_reason": dict(sorted(self.dead_letters_by_reason.items())),
        }


def file_checksums(files: list[tuple[int, str, str]], redact_path) -> list[dict]:
    """Size and SHA-256 of every input file, for the manifest; names pass through ``redact_path``."""
    out = []
    for _, path, rel in files:
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    size += len(block)
            out.append({"path": redact_path(rel), "bytes": size, "sha256": digest.hexdigest()})
        except OSError as exc:
            out.append({"path": redact_path(rel), "bytes": None, "sha256": None, "error": exc.strerror or str(exc)})
    return out


class _SpillFn(beam.DoFn):
    """Write parsed tables aside, split by shard; emit ``(shard, (tag, path))`` (keeps memory flat).

    Rows are buffered across chunks and flushed every ``FLUSH_ROWS`` rows, so the number of
    staged files is (input rows / FLUSH_ROWS) x shards, not chunks x shards.
    """

    FLUSH_ROWS = 250_000  # with a parse batch queried ahead (transforms.ingest._ParseFn), 500k raised the peak

    def __init__(self, store: LakeStore, stage: str, tag: str, shards: int):
        self.store, self.stage, self.tag, self.shards = store, stage, tag, shards

    def start_bundle(self):
        self.buffer: list[pa.Table] = []
        self.rows = 0

    def process(self, table: pa.Table):
        self.buffer.append(table)
        self.rows += table.num_rows
        if self.rows >= self.FLUSH_ROWS:
            yield from self._flush()

    def finish_bundle(self):
        for shard, ref in self._flush():
            yield beam.utils.windowed_value.WindowedValue((shard, ref), 0, [beam.transforms.window.GlobalWindow()])

    def _flush(self):
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        self.buffer, self.rows = [], 0
        key = "raw_sha256" if self.tag == "dead_letter" else "event_id"
        for shard, part in split_by_shard(table, key, self.shards):
            path = self.store.join(self.stage, "parsed", self.tag, f"{uuid.uuid4().hex}.arrow")
            yield shard, (self.tag, self.store.write_scratch(part, path))


class _LinesFn(beam.DoFn):
    def __init__(self, store: LakeStore, stage: str):
        self.store, self.stage = store, stage

    def process(self, total: int):
        self.store.put_bytes(self.store.join(self.stage, "stats", "lines.json"), json.dumps({"lines": total}).encode())
        yield total


LOOKUP_SCHEMA = pa.schema([("event_id", pa.string()), ("payload_sha256", pa.string())])


class LakeKeys:
    """Lookups of event ids and dead-letter keys in the lake's committed tables, at pinned versions.

    Built from lake tables only (no local index): any worker that can read the lake can use it.
    """

    def __init__(self, layout: DataLayout, pinned: dict[str, int]):
        self.layout, self.pinned = layout, pinned
        self._datasets: dict[str, object] = {}
        self._data_files: dict[str, list] = {}

    def _dataset(self, table: str):
        if table not in self._datasets:
            version = self.pinned.get(table)
            self._datasets[table] = lake.dataset(self.layout, table, version) if version is not None else None
        return self._datasets[table]

    def _files(self, table: str) -> list:
        """The data files of the pinned version, ``(path, size)`` from the log."""
        if table not in self._data_files:
            version, sizes = self.pinned.get(table), {}
            if version is not None:
                lake.files_by_partition(self.layout, table, version, sizes=sizes)
            self._data_files[table] = sorted(sizes.items())
        return self._data_files[table]

    def event_hashes(self, ids: list[str]) -> dict[str, str]:
        """The payload hash of each of ``ids`` the lake holds. On a local disk, one DuckDB scan of each
        table's files (``LakeStore.read_rows``) whose filter on ``event_id`` runs inside the reader:
        ``payload_sha256`` is decoded only where an id matches (usually nowhere: a batch is mostly new
        events). On an object store, where bytes cost more than decoding, two passes: the
        ``event_id`` column of every file, which says which files hold any of them, then
        ``payload_sha256`` from those files only (a 64-character hash per row would triple the bytes)."""
        found: dict[str, str] = {}
        if not ids:
            return found
        store = self.layout.store
        for table in ("events", "usage"):
            if store.is_local:  # no files: an empty table
                hits = store.read_rows(self._files(table), LOOKUP_SCHEMA, "event_id", ids)
            else:
                hits = self._remote_hits(table, ids)
            if hits is not None:
                found.update(zip(hits["event_id"].to_pylist(), hits["payload_sha256"].to_pylist(), strict=True))
        return found

    def _remote_hits(self, table: str, ids: list[str]) -> pa.Table | None:
        data = self._dataset(table)
        if data is None:
            return None
        wanted = pc.field("event_id").isin(pa.array(ids, pa.string()))
        holding = {tagged.fragment.path: tagged.fragment
                   for tagged in data.scanner(columns=["event_id"], filter=wanted).scan_batches()
                   if tagged.record_batch.num_rows}  # fmt: skip
        if not holding:
            return None
        holders = ds.FileSystemDataset(list(holding.values()), data.schema, data.format, data.filesystem)
        return holders.to_table(columns=["event_id", "payload_sha256"], filter=wanted)

    def dead_keys(self, keys: list[str]) -> set[str]:
        data = self._dataset("dead_letter")
        if data is None or not keys:
            return set()
        hits = data.to_table(columns=["raw_sha256"], filter=pc.field("raw_sha256").isin(pa.array(keys, pa.string())))
        return set(hits["raw_sha256"].to_pylist())


class _DedupShardFn(beam.DoFn):
    """One dedup shard's staged rows -> its kept rows by (table, month), dead letters and stats.

    Two shards are deduplicated side by side on background threads (``THREADS``): most of the work is
    Arrow (reads, sorts, takes, IPC writes), which releases the GIL, and one shard alone kept one core
    busy. Memory holds two shards at most; outputs come in shard order (``OrderedWorker``)."""

    THREADS = 2

    def __init__(self, stage: str, layout: DataLayout, pinned: dict[str, int]):
        self.stage, self.layout, self.pinned = stage, layout, pinned

    def setup(self):
        self.keys = LakeKeys(self.layout, self.pinned)
        self.store = self.layout.store
        self.worker = OrderedWorker(self.THREADS - 1, "dedup-shard", self.THREADS)

    def teardown(self):
        self.worker.close()

    def start_bundle(self):
        self.worker.discard()

    def process(self, element):
        shard, refs = element  # refs listed here: a grouped iterable is not for another thread to read later
        for _, outputs in self.worker.submit(shard, self._dedup, (shard, list(refs))):
            yield from outputs

    def finish_bundle(self):
        for _, outputs in self.worker.drain():
            for output in outputs:
                yield beam.utils.windowed_value.WindowedValue(output, 0, [beam.transforms.window.GlobalWindow()])

    def _dedup(self, element) -> list:
        return list(self._dedup_outputs(element))

    def _dedup_outputs(self, element):
        shard, refs = element
        store = self.store
        parts = {tag: [] for tag in TAGS}
        for tag, path in refs:
            parts[tag].append(store.read_scratch(path))
        tables = {t: pa.concat_tables(p) if p else empty_staging(t) for t, p in parts.items()}
        del parts
        result = dedup_shard(tables["events"], tables["usage"], tables["dead_letter"],
                             self.keys.event_hashes, self.keys.dead_keys)  # fmt: skip
        del tables  # the staged rows: only the kept ones are held from here on (two shards run at once)
        stats = {
            "events": result.events.num_rows,
            "usage": result.usage.num_rows,
            "dead_letters": result.dead_letter.num_rows,
            "duplicates": result.duplicates,
            "dead_by_reason": lake.counts_by(result.dead_letter, "reason"),
        }
        # kept rows go aside by (table, month); one writer per table-month then writes one file per
        # partition, so the number of files does not grow with the number of dedup shards
        kept = store.join(self.stage, "kept")
        for tag in ("events", "usage"):
            by_month = _split_by_month(getattr(result, tag))
            setattr(result, tag, None)  # the split holds the rows (sorted by month) only while it writes them
            for month, part in by_month:
                path = store.join(kept, tag, month, f"shard-{shard:03d}.arrow")
                yield (tag, month), store.write_scratch(part, path)
        if result.dead_letter.num_rows:
            path = store.join(kept, "dead_letter", "all", f"shard-{shard:03d}.arrow")
            yield ("dead_letter", "all"), store.write_scratch(result.dead_letter, path)
        store.put_bytes(store.join(self.stage, "stats", f"shard-{shard:03d}.json"), json.dumps(stats).encode())


def _split_by_month(table: pa.Table):
    if table.num_rows == 0:
        return
    days = table["event_date"].combine_chunks().cast(pa.int32()).to_numpy()
    months = days.astype("datetime64[D]").astype("datetime64[M]")
    order = np.argsort(months, kind="stable")  # one take and slices, not one filter of the table per month
    table, months = table.take(pa.array(order)), months[order]
    starts = np.flatnonzero(np.r_[True, months[1:] != months[:-1]])
    for start, end in zip(starts.tolist(), np.r_[starts[1:], len(months)].tolist(), strict=True):
        yield str(months[start]), table.slice(start, end - start)


class _WritePartitionsFn(beam.DoFn):
    """All kept rows of one table-month (from every shard) -> one sorted data file per partition,
    written into the lake table's folder (uncommitted: the driver commits the run's files at once).

    A table-month is read and sorted here while the one before it is written on a background thread
    (Parquet encoding releases the GIL): one sorted table-month at most waits to be written."""

    def __init__(self, layout: DataLayout, run_id: str):
        self.layout, self.run_id = layout, run_id

    def setup(self):
        self.writer = OrderedWorker(1, "partition-write")

    def teardown(self):
        self.writer.close()

    def start_bundle(self):
        self.writer.discard()

    def process(self, element):
        (tag, month), paths = element
        store = self.layout.store
        table = pa.concat_tables([store.read_scratch(p) for p in sorted(paths)])
        partition, sort_keys = _PARTITIONING["dead_letter" if tag == "dead_letter" else "rows"]
        table = lake.partition_sort(table, partition, sort_keys)
        for _, count in self.writer.submit((tag, month), self._write, tag, table, partition, sort_keys):
            yield count

    def finish_bundle(self):
        for _, count in self.writer.drain():
            yield beam.utils.windowed_value.WindowedValue(count, 0, [beam.transforms.window.GlobalWindow()])

    def _write(self, tag: str, table: pa.Table, partition: str, sort_keys: list[tuple[str, str]]) -> int:
        written = lake.write_partitioned(table, self.layout.table_path(tag), partition, f"part-{self.run_id}.parquet",
                                         sort_keys, self.layout.store, lake.SMALL_FILE_OPTIONS, presorted=True)  # fmt: skip
        return len(written)


# partition column and sort order of the files WritePartitions writes: dead letters, and events/usage rows
_PARTITIONING = {
    "dead_letter": ("reason", [("source_file", "ascending"), ("source_line", "ascending")]),
    "rows": ("event_date", [("occurred_at", "ascending"), ("event_id", "ascending")]),
}


@dataclass
class MessageBatch:
    """A micro-batch of broker messages: bodies in arrival order and where each came from."""

    bodies: list[bytes]
    sources: list[MessageSource]

    def __post_init__(self):
        if len(self.bodies) != len(self.sources):
            raise ValueError("one source per message body")


MESSAGE_BATCH_FILE = "message-batch"
_MESSAGES_SCHEMA = pa.schema([("body", pa.binary()), ("label", pa.string()), ("position", pa.int64()),
                              ("digest", pa.string())])  # fmt: skip


def stage_messages(messages: MessageBatch, store, stage: str) -> str:
    """Write a message batch into the run's staging folder (Arrow IPC); the pipeline reads it from there.

    Handing the bodies to ``beam.Create`` instead would put them in the pipeline's definition, which
    Beam pickles, compresses and unpickles again: about a third of a 5,000-message batch's time."""
    path = store.join(stage, "messages.arrow")
    table = pa.table({"body": pa.array(messages.bodies, pa.binary()),
                      "label": pa.array([s.label for s in messages.sources], pa.string()),
                      "position": pa.array([s.position for s in messages.sources], pa.int64()),
                      "digest": pa.array([s.digest for s in messages.sources], pa.string())},
                     schema=_MESSAGES_SCHEMA)  # fmt: skip
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, _MESSAGES_SCHEMA) as writer:
        writer.write_table(table)
    store.put_bytes(path, sink.getvalue().to_pybytes())  # in the lake's store: workers elsewhere read it too
    return path


def _read_staged_messages(store, path: str) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(store.get_bytes(path))).read_all()


class StagedMessageSources:
    """The ``MessageSource`` list of a staged batch, loaded where the labelling runs (picklable)."""

    def __init__(self, store, path: str):
        self.store, self.path = store, path

    def __call__(self) -> list[MessageSource]:
        table = _read_staged_messages(self.store, self.path)
        return [MessageSource(label, position, digest) for label, position, digest in
                zip(table["label"].to_pylist(), table["position"].to_pylist(), table["digest"].to_pylist(),
                    strict=True)]  # fmt: skip


class _MessageChunksFn(beam.DoFn):
    """A staged message batch -> ``LineChunk``s of one pseudo-file (line = index in the batch + 1)."""

    def __init__(self, store, chunk_lines: int):
        self.store, self.chunk_lines = store, chunk_lines

    def process(self, path: str):
        bodies = _read_staged_messages(self.store, path)["body"].combine_chunks().cast(pa.large_binary())
        for start in range(0, len(bodies), self.chunk_lines):
            yield LineChunk(MESSAGE_BATCH_FILE, 0, start + 1, bodies.slice(start, self.chunk_lines))


def _tag_label(tag: str) -> str:
    return tag.title().replace("_", "")


def build_pipeline(p: beam.Pipeline, files, stage: str, layout: DataLayout, pinned: dict[str, int], run_id: str,
                   shards: int, pii: PiiPolicy, chunk_lines: int,
                   messages: MessageBatch | None = None):  # fmt: skip
    """Files (``(index, path, relative path)``), or a batch of broker ``messages``, into the lake's folders."""
    if messages is None:
        chunks = (p | "ListFiles" >> beam.Create(files, reshuffle=False)
                  | "ReadEventFiles" >> ReadEventFiles(chunk_lines))  # fmt: skip
    else:
        staged = stage_messages(messages, layout.store, stage)
        chunks = (p | "StagedMessages" >> beam.Create([staged], reshuffle=False)
                  | "MessageChunks" >> beam.ParDo(_MessageChunksFn(layout.store, chunk_lines)))  # fmt: skip
    parsed = chunks | "ParseEventLines" >> ParseEventLines(pii)
    outputs = {tag: parsed[tag] for tag in TAGS}
    if messages is not None:
        sources = StagedMessageSources(layout.store, staged)
        outputs = {tag: outputs[tag] | f"LabelSources{_tag_label(tag)}" >> LabelMessageSources(sources, tag)
                   for tag in TAGS}  # fmt: skip
    store = layout.store
    _ = parsed.lines | "CountLines" >> beam.CombineGlobally(sum) | "RecordLines" >> beam.ParDo(_LinesFn(store, stage))
    spilled = [
        outputs[tag] | f"Spill{_tag_label(tag)}" >> beam.ParDo(_SpillFn(store, stage, tag, shards))
        for tag in TAGS
    ]
    return (
        spilled
        | "MergeShards" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "DeduplicateShard" >> beam.ParDo(_DedupShardFn(stage, layout, pinned))
        | "GroupByTableMonth" >> beam.GroupByKey()
        | "WritePartitions" >> beam.ParDo(_WritePartitionsFn(layout, run_id))
    )


def run_ingest(config: RunConfig, run_id: str | None = None, write_run_manifest: bool = True,
               chunk_lines: int = 50_000, checksums: bool = True) -> IngestResult:  # fmt: skip
    """Ingest ``config.input_dir`` into the lake under ``config.layout``: one Delta commit per table."""
    if config.input_dir is None:
        raise InputError("no input folder given (--input)")
    return _ingest(config, discover_input(config.input_dir), None, run_id, write_run_manifest, chunk_lines, checksums)


def ingest_batch(config: RunConfig, *, files: list[tuple[int, str, str]] | None = None,
                 messages: MessageBatch | None = None, app_transactions: dict[str, int] | None = None,
                 metadata: dict | None = None, run_id: str | None = None, chunk_lines: int = 50_000,
                 compact_min_files: int = STREAM_COMPACT_MIN_FILES) -> IngestResult:  # fmt: skip
    """One stream micro-batch (``revenue stream``): event ``files`` or broker ``messages`` into the lake.

    The same bounded Beam ingest as ``run_ingest``; every ingest table gets a commit (empty if the
    batch added nothing to it) carrying ``app_transactions`` (the source's position) and
    ``metadata``, so the lake records what the batch consumed in the same commits as its rows.
    No manifest (the stream logs one line per batch).

    Then, still under the writer lease, each table's partitions holding ``compact_min_files`` small
    files or more are compacted in a commit of their own that changes no rows (``lake.compact_small_files``;
    0: never), the fullest first, up to about ``STREAM_COMPACT_BUDGET`` times the files the batch
    wrote to the table. Without it every batch adds a file to each partition it touches, and the
    duplicate lookups of every later batch, the publish's reads and the Delta log all grow with the
    number of batches: with it, a partition holds a bounded number of small files (a partition left
    for a later batch by the budget gains at most one file a batch meanwhile).
    A kill before or during the compaction leaves the batch committed and the files as they were
    (the next batch compacts them; the compaction's unnamed files go at the next ``revenue maintain``).
    """
    if (files is None) == (messages is None):
        raise ValueError("give files or messages")
    return _ingest(config, files or [], messages, run_id, False, chunk_lines, False,
                   stream_commit={"app_transactions": app_transactions or {}, "metadata": metadata or {}},
                   compact_min_files=compact_min_files)


def _compact_small_files(layout: DataLayout, run_id: str, min_files: int, written: dict[str, int]) -> dict[str, dict]:
    """Each ingest table's partitions with ``min_files`` small files or more, compacted (see ingest_batch),
    about ``STREAM_COMPACT_BUDGET`` times the files the batch ``written`` to the table at most.

    The batch is committed whatever happens here: a compaction the storage refuses is logged and
    left to the next batch (or ``revenue maintain``), never a failed batch."""
    from deltalake.exceptions import DeltaError

    out = {}
    for table in INGEST_TABLES:
        try:
            merged = lake.compact_small_files(layout, table, run_id, min_files, STREAM_COMPACT_TARGET_BYTES,
                                              max_files=STREAM_COMPACT_BUDGET * max(1, written.get(table, 0)))
        except (DeltaError, OSError) as exc:
            log.warning("compacting %s after batch %s failed (left for the next batch): %s", table, run_id, exc)
            continue
        if merged:
            out[table] = merged
    return out


def _ingest(config: RunConfig, files, messages: MessageBatch | None, run_id: str | None, write_run_manifest: bool,
            chunk_lines: int, checksums: bool, stream_commit: dict | None = None,
            compact_min_files: int = 0) -> IngestResult:  # fmt: skip
    started = time.monotonic()
    layout = config.layout
    run_id = run_id or new_run_id()
    config = config.with_pii()
    if config.pii_key is None:
        log.warning("%s is not set: customer emails will not be stored (set it to keep keyed hashes)", PII_KEY_ENV)
    total_bytes = input_json_bytes(files)
    if messages is not None:
        total_bytes = sum(len(b) for b in messages.bodies)
    shards = config.shards or max(1, min(MAX_SHARDS, -(-total_bytes // SHARD_INPUT_BYTES)))
    with lake.lake_lock(layout, (lake.INGEST_SCOPE,)):  # the metrics stage may run meanwhile (lake_lock)
        pinned = lake.versions(layout, INGEST_TABLES)  # duplicates are checked against these versions
        store, stage = layout.store, layout.staging_path(run_id)
        with lake.run_writes(layout, run_id, INGEST_TABLES) as committed_tables:
            with beam.Pipeline(options=pipeline_options(config.beam_args)) as p:
                build_pipeline(p, files, stage, layout, pinned, run_id, shards, config.pii, chunk_lines, messages)
            lines = json.loads(store.get_bytes(store.join(stage, "stats", "lines.json")))["lines"]
            totals = {"events": 0, "usage": 0, "dead_letters": 0, "duplicates": 0}
            by_reason: dict[str, int] = {}
            shard_stats = [f.path for f in store.files(store.join(stage, "stats")) if f.base_name.startswith("shard-")]
            for path in shard_stats:
                stats = json.loads(store.get_bytes(path))
                for k in totals:
                    totals[k] += stats[k]
                for reason, n in stats["dead_by_reason"].items():
                    by_reason[reason] = by_reason.get(reason, 0) + n
            accounted = totals["events"] + totals["usage"] + totals["duplicates"] + totals["dead_letters"]
            if accounted != lines:
                raise RevenueError(
                    f"conservation check failed: read {lines} lines but accounted for {accounted}; nothing committed"
                )
            # one commit per table; a kill between two commits is made whole by the next run, whose
            # deduplication sees the committed table's events as duplicates
            committed, written = {}, {}
            for table in INGEST_TABLES:
                run_files = lake.run_files(layout, table, run_id)
                written[table] = len(run_files)
                committed[table] = lake.commit(layout, table, run_files, run_id,
                                               read_version=pinned.get(table),
                                               **(dict(stream_commit, always=True) if stream_commit else {}))
                committed_tables.add(table)
        store.delete_dir(stage)
        compacted = _compact_small_files(layout, run_id, compact_min_files, written) if compact_min_files else {}
        committed.update({t: c["version"] for t, c in compacted.items()})
    result = IngestResult(
        run_id=run_id, lines_read=lines, events_written=totals["events"], usage_written=totals["usage"],
        duplicates=totals["duplicates"], dead_letters=totals["dead_letters"], dead_letters_by_reason=by_reason,
        files=file_checksums(files, config.redact_path) if checksums else [], seconds=round(time.monotonic() - started, 3),
        lake_versions={t: v for t, v in committed.items() if v is not None}, compacted=compacted,
    )  # fmt: skip
    if write_run_manifest:
        write_manifest(layout, run_id, "ingest", {
            "config": config.describe(), "counts": result.counts(), "input_files": result.files,
            "seconds": result.seconds, "shards": shards, "lake_versions": result.lake_versions,
        })  # fmt: skip
    return result
