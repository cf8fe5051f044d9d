"""Ingest transforms: read event files in chunks, parse to Arrow, deduplicate by ``event_id``.

``ReadEventFiles``
    Input: bounded PCollection of ``(file_index, path, source_file)``. Reads each file
    (``.jsonl`` or ``.jsonl.gz``) in chunks of lines; a file that cannot be read or a
    gzip stream that ends early becomes one dead-letter line (``unreadable_file`` /
    ``truncated_gzip``) so nothing is skipped silently. Output: ``LineChunk``s and
    those file-level dead letters (as ``LineChunk`` with ``file_error`` set).
``ParseEventLines``
    ``LineChunk`` -> tagged Arrow tables ``events``, ``usage``, ``dead_letter`` (the
    staging schemas: lake columns plus ``event_date`` and ``file_index``), one set per chunk.
    Chunks are validated vectorised in batches of ~100k lines (``transforms.fastparse``, one
    query per batch, run on a background thread with its own DuckDB connection, one batch ahead
    of the batch being finished on the DoFn's thread); lines it cannot prove valid and clean go
    through ``parse_lines``.
    Counters: ``ingest/lines_read``, ``ingest/parsed_events``, ``ingest/parsed_usage``,
    ``ingest/parse_dead_letters``.
``dedup_shard``
    The pure duplicate/conflict resolution used per shard (all rows whose ``event_id``
    hashes to one shard): an id already in the lake keeps the lake's version; otherwise
    the first occurrence in input order (file path order, then line) stays. Later rows
    with an equal payload are duplicates; with a different payload they are
    ``conflicting_duplicate`` dead letters.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms import schemas
from transforms.concurrency import OrderedWorker
from transforms.fastparse import QUERY_THREADS, QueriedChunks, connection, finish_chunks, query_chunks
from transforms.parse import (
    DEAD_COLUMNS,
    ParsedChunk,
    dead_letter_key,
    parse_lines,
    truncate_raw,
)
from transforms.redact import PiiPolicy, as_policy

log = logging.getLogger(__name__)

CHUNK_LINES = 50_000
READ_BLOCK = 8 << 20
TAGS = ("events", "usage", "dead_letter")


def _staging_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("event_date", pa.date32())).append(pa.field("file_index", pa.int64()))


EVENTS_STAGING = _staging_schema(schemas.EVENTS)
USAGE_STAGING = _staging_schema(schemas.USAGE)
DEAD_STAGING = schemas.DEAD_LETTER.append(pa.field("reason", pa.string())).append(pa.field("file_index", pa.int64()))


@dataclass(frozen=True)
class LineChunk:
    source_file: str  # path relative to the input folder
    file_index: int  # position of the file in path order (conflict resolution uses it)
    first_line: int
    # the raw lines: a tuple of bytes, or (from files and staged messages) one large_binary Arrow
    # array, which the vectorised parse takes as it is: no Python object per line
    lines: tuple[bytes, ...] | pa.Array = ()
    file_error: tuple[str, str] | None = None  # (reason, message) for a file-level dead letter

    def line_list(self) -> list[bytes]:
        return self.lines.to_pylist() if isinstance(self.lines, pa.Array) else list(self.lines)

    def line_bytes(self) -> int:
        return self.lines.nbytes if isinstance(self.lines, pa.Array) else sum(map(len, self.lines))


def split_lines(data: bytes) -> tuple[pa.Array, bytes]:
    """The LF-terminated lines of ``data`` (without their LF; a CR stays) as one large_binary array, and
    the unterminated rest: what ``data.split(b"\\n")`` gives, without a Python object per line."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 0x0A)
    n = len(newlines)
    if not n:
        return pa.array([], pa.large_binary()), data
    end = int(newlines[-1]) + 1
    keep = np.ones(end, dtype=bool)
    keep[newlines] = False
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:] = newlines - np.arange(n)  # line k ends where its LF was, less the k LFs before it
    body = buf[:end][keep]
    lines = pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(body)])
    return lines, data[end:]


def read_file_chunks(path: str, source_file: str, file_index: int, chunk_lines: int = CHUNK_LINES):
    """Yield ``LineChunk``s of a file (lines as Arrow arrays); read errors become a final chunk with ``file_error``."""
    line_no = 1
    pending: list[pa.Array] = []
    count = 0
    tail = b""

    def chunk() -> LineChunk:
        return LineChunk(source_file, file_index, line_no, pa.concat_arrays(pending))

    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            while True:
                block = handle.read(READ_BLOCK)
                if not block:
                    break
                lines, tail = split_lines(tail + block)
                pending.append(lines)
                count += len(lines)
                if count >= chunk_lines:
                    yield chunk()
                    line_no += count
                    pending, count = [], 0
        if tail:
            pending.append(pa.array([tail], pa.large_binary()))
            count += 1
        if count:
            yield chunk()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        if count:
            yield chunk()
            line_no += count
        if isinstance(exc, EOFError | zlib.error) or (
            isinstance(exc, gzip.BadGzipFile) and line_no > 1
        ):
            reason, message = "truncated_gzip", f"compressed stream ends early after line {line_no - 1}: {exc}"
        else:
            reason, message = "unreadable_file", f"cannot read file: {getattr(exc, 'strerror', None) or exc}"
        yield LineChunk(source_file, file_index, line_no, (), (reason, message))


class _ReadFileFn(beam.DoFn):
    def __init__(self, chunk_lines: int):
        self.chunk_lines = chunk_lines
        self.files = Metrics.counter("ingest", "files_read")

    def process(self, element):
        file_index, path, source_file = element
        self.files.inc()
        yield from read_file_chunks(path, source_file, file_index, self.chunk_lines)


class ReadEventFiles(beam.PTransform):
    def __init__(self, chunk_lines: int = CHUNK_LINES):
        super().__init__()
        if chunk_lines < 1:
            raise ValueError("chunk_lines must be >= 1")
        self.chunk_lines = chunk_lines

    def expand(self, files):
        return files | "ReadChunks" >> beam.ParDo(_ReadFileFn(self.chunk_lines))


def chunk_to_tables(chunk: ParsedChunk) -> dict[str, pa.Table]:
    return {
        "events": pa.table(chunk.events, schema=EVENTS_STAGING),
        "usage": pa.table(chunk.usage, schema=USAGE_STAGING),
        "dead_letter": pa.table(chunk.dead, schema=DEAD_STAGING),
    }


def parse_chunk(element: LineChunk, pii: PiiPolicy | bytes | None,
                vectorised: bool = True) -> tuple[dict[str, pa.Table], ParsedChunk]:  # fmt: skip
    """Parse one chunk to staging tables; ``pii`` is a ``PiiPolicy`` (legacy: the key bytes or None).

    ``vectorised`` (default): lines are decided a chunk at a time (``transforms.fastparse``) and only
    the others go through ``parse_lines``; ``False`` runs ``parse_lines`` on every line (the
    reference the differential test compares against). Both give the same tables.
    """
    policy = as_policy(pii)
    if vectorised and not element.file_error:
        return parse_chunks([element], policy)[0]
    parsed = ParsedChunk()
    if element.file_error:
        reason, message = element.file_error
        source_file = policy.redact_path(element.source_file)
        marker = f"{reason}:{source_file}".encode("utf-8", "surrogatepass")
        parsed.lines = 1  # the unreadable remainder counts as one line read, dead-lettered
        parsed.dead["source_file"].append(source_file)
        parsed.dead["source_line"].append(element.first_line if reason == "truncated_gzip" else 0)
        parsed.dead["raw"].append("")
        parsed.dead["raw_sha256"].append(dead_letter_key(source_file, 0, marker))
        parsed.dead["message"].append(truncate_raw(policy.redact(message)))
        parsed.dead["event_id"].append(None)
        parsed.dead["reason"].append(reason)
        parsed.dead["file_index"].append(element.file_index)
    else:
        parse_lines(element.line_list(), element.source_file, element.file_index, element.first_line,
                    policy, parsed)  # fmt: skip
    return chunk_to_tables(parsed), parsed


def parse_chunks(elements: list[LineChunk], pii: PiiPolicy | bytes | None) -> list[tuple[dict[str, pa.Table], ParsedChunk]]:
    """``parse_chunk`` of each chunk of lines (no ``file_error``), vectorised with one query for them all."""
    return finish_parse(elements, query_chunks(_query_input(elements)), pii)


def _query_input(elements: list[LineChunk]) -> list[tuple]:
    return [(e.lines, e.source_file, e.file_index, e.first_line) for e in elements]


def finish_parse(elements: list[LineChunk], queried: QueriedChunks,
                 pii: PiiPolicy | bytes | None) -> list[tuple[dict[str, pa.Table], ParsedChunk]]:  # fmt: skip
    """``parse_chunks`` once the query has run (``query_chunks``): the per-line path and the staging tables."""
    results = finish_chunks(_query_input(elements), queried, as_policy(pii), EVENTS_STAGING, USAGE_STAGING)
    out = []
    for fast_events, fast_usage, parsed in results:
        tables = chunk_to_tables(parsed)
        tables["events"] = _merge_by_line(fast_events, tables["events"])
        tables["usage"] = _merge_by_line(fast_usage, tables["usage"])
        out.append((tables, parsed))
    return out


def _merge_by_line(fast: pa.Table, slow: pa.Table) -> pa.Table:
    """Rows of both paths in line order, as the per-line path alone would have produced them."""
    if not slow.num_rows:
        return fast
    if not fast.num_rows:
        return slow
    both = pa.concat_tables([fast, slow]).combine_chunks()
    return both.take(pc.sort_indices(both["source_line"]))


class _ParseFn(beam.DoFn):
    """Chunks are parsed in batches of at least ``BATCH_LINES`` lines (or ``BATCH_BYTES``), one vectorised
    query per batch: the query's planning is a fixed cost per call. Memory stays bounded by the batch.

    The queries of batches (Arrow and DuckDB, which release the GIL) run on background threads while
    this thread finishes the batch before them (the per-line path, the staging tables, and whatever the
    fused steps around it do: reading the next chunks, spilling): ``QUERIES_AHEAD`` batches at most are
    queried ahead of the one being finished, so memory holds that many batches more. Outputs come in
    batch order, and a failed query fails the bundle (``transforms.concurrency.OrderedWorker``).

    ``PARALLEL_QUERIES`` batches are queried side by side, each on a DuckDB connection of its own,
    the machine's DuckDB threads (``fastparse.QUERY_THREADS``) shared between them: one batch's
    single-threaded steps (the eligibility regexes, the takes) then overlap another's DuckDB query,
    and no more DuckDB threads run than cores (5M events, 2 cores, single runs: 26.1-26.2 s with two threads of one DuckDB thread
    each, 27.5 s with one thread of two; two threads of two DuckDB threads each ran 1.4 s slower than
    one of two). A connection of one thread also returns the rows in line order (no sort needed).
    """

    BATCH_LINES = 100_000
    BATCH_BYTES = 32 << 20
    QUERIES_AHEAD = 2
    PARALLEL_QUERIES = 2

    def __init__(self, policy: PiiPolicy):
        self.policy = policy
        self.lines = Metrics.counter("ingest", "lines_read")
        self.events = Metrics.counter("ingest", "parsed_events")
        self.usage = Metrics.counter("ingest", "parsed_usage")
        self.dead = Metrics.counter("ingest", "parse_dead_letters")
        self.emails = Metrics.counter("ingest", "emails_not_stored")

    def setup(self):
        # each of its threads opens its own DuckDB connection (transforms.fastparse.connection) at its first query
        self.worker = OrderedWorker(self.QUERIES_AHEAD, "parse-query", self.PARALLEL_QUERIES)

    def teardown(self):
        self.worker.close()

    def start_bundle(self):
        self.worker.discard()  # queries of a bundle that failed: their batches are parsed again, or not at all
        self.pending: list[LineChunk] = []
        self.pending_lines = self.pending_bytes = 0

    def process(self, element: LineChunk):
        if element.file_error:
            yield from self._outputs(*parse_chunk(element, self.policy))
            return
        self.pending.append(element)
        self.pending_lines += len(element.lines)
        self.pending_bytes += element.line_bytes()
        if self.pending_lines >= self.BATCH_LINES or self.pending_bytes >= self.BATCH_BYTES:
            yield from self._flush()

    def finish_bundle(self):
        for output in itertools.chain(self._flush(), self._drain()):
            value = beam.utils.windowed_value.WindowedValue(output.value, 0, [beam.transforms.window.GlobalWindow()])
            yield beam.pvalue.TaggedOutput(output.tag, value)

    def _flush(self):
        """Query the pending batch in the background; finish the batches whose queries are done."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.pending_lines = self.pending_bytes = 0
        yield from self._finish(self.worker.submit(batch, self._query, _query_input(batch)))

    def _query(self, chunks) -> QueriedChunks:
        return query_chunks(chunks, connection(max(1, QUERY_THREADS // self.PARALLEL_QUERIES)))

    def _drain(self):
        yield from self._finish(self.worker.drain())  # called only once the last batch is submitted

    def _finish(self, queried: list[tuple[list[LineChunk], QueriedChunks]]):
        for batch, result in queried:
            for tables, parsed in finish_parse(batch, result, self.policy):
                yield from self._outputs(tables, parsed)

    def _outputs(self, tables: dict[str, pa.Table], parsed: ParsedChunk):
        self.lines.inc(parsed.lines)
        self.events.inc(tables["events"].num_rows)
        self.usage.inc(tables["usage"].num_rows)
        self.dead.inc(tables["dead_letter"].num_rows)
        self.emails.inc(parsed.emails_dropped)
        for tag in TAGS:
            if tables[tag].num_rows:
                yield beam.pvalue.TaggedOutput(tag, tables[tag])
        yield beam.pvalue.TaggedOutput("lines", parsed.lines)


class ParseEventLines(beam.PTransform):
    """``LineChunk`` -> tagged outputs ``events``, ``usage``, ``dead_letter`` (Arrow tables), ``lines`` (ints).

    ``pii``: a ``transforms.redact.PiiPolicy`` (the legacy ``pii_key`` bytes or None is still
    accepted). Every line ends in exactly one output; card numbers and emails are redacted
    before any table is built (file names included). Counter ``ingest/emails_not_stored``
    counts email fields dropped for want of an email key.
    """

    def __init__(self, pii: PiiPolicy | bytes | None = None):
        super().__init__()
        self.policy = as_policy(pii)

    def expand(self, chunks):
        return chunks | "Parse" >> beam.ParDo(_ParseFn(self.policy)).with_outputs(*TAGS, "lines")


# ---------------------------------------------------------------------------- dedup


@dataclass
class DedupResult:
    events: pa.Table  # lake schema + event_date
    usage: pa.Table
    dead_letter: pa.Table  # lake schema + reason
    duplicates: int  # rows already seen (in this input or the lake), dead letters already recorded included


def dedup_shard(
    events: pa.Table,
    usage: pa.Table,
    dead: pa.Table,
    lake_hashes: Callable[[list[str]], dict[str, str]],
    known_dead: Callable[[list[str]], set[str]],
) -> DedupResult:
    """Resolve duplicates and conflicts among one shard's rows and against the lake."""
    keys = _id_keys(events, usage)
    keep, duplicates, conflict_rows = _classify(keys, lake_hashes)
    n_events = events.num_rows
    kept_events = np.zeros(n_events, dtype=bool)
    kept_usage = np.zeros(usage.num_rows, dtype=bool)
    kept_events[keep[keep < n_events]] = True
    kept_usage[keep[keep >= n_events] - n_events] = True
    conflicts = _conflict_dead_letters(events, usage, conflict_rows)
    dead_all, dead_dups = _drop_known_dead(pa.concat_tables([dead, conflicts]) if conflicts.num_rows else dead,
                                           known_dead)  # fmt: skip
    ev = events.filter(pa.array(kept_events))
    us = usage.filter(pa.array(kept_usage))
    return DedupResult(
        events=ev.drop_columns(["file_index"]),
        usage=us.drop_columns(["file_index"]),
        dead_letter=dead_all.drop_columns(["file_index"]),
        duplicates=duplicates + dead_dups,
    )


def _id_keys(events: pa.Table, usage: pa.Table) -> pa.Table:
    """One row per accepted row of either table, in input order: ``row`` < n_events are events."""

    def both(column: str) -> pa.Array:
        return pa.concat_arrays([events[column].combine_chunks(), usage[column].combine_chunks()])

    return pa.table({"event_id": both("event_id"), "sha": both("payload_sha256"), "file_index": both("file_index"),
                     "line": both("source_line"),
                     "row": pa.array(np.arange(events.num_rows + usage.num_rows, dtype=np.int64))})  # fmt: skip


def _classify(keys: pa.Table, lake_hashes) -> tuple[np.ndarray, int, list[int]]:
    """Rows to keep, the number of duplicates, and the conflicting rows (CONTRACT section 1).

    Per event_id, the version already in the lake wins, else the first in input order (file
    path order, then line); a later row with an equal payload is a duplicate, else a conflict.
    """
    if not keys.num_rows:
        return np.zeros(0, dtype=np.int64), 0, []
    keys = keys.take(pc.sort_indices(keys, [("event_id", "ascending"), ("file_index", "ascending"),
                                            ("line", "ascending")]))  # fmt: skip
    ids = keys["event_id"].combine_chunks()
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = ~pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    group = np.cumsum(first) - 1
    first_pos = np.flatnonzero(first)
    unique_ids = ids.take(pa.array(first_pos)).to_pylist()
    in_lake = lake_hashes(unique_ids)
    sha = keys["sha"].combine_chunks().to_numpy(zero_copy_only=False)
    reference = sha[first_pos].copy()  # the version that stays: the lake's, else the first row's
    from_lake = np.array([event_id in in_lake for event_id in unique_ids], dtype=bool)
    for g in np.flatnonzero(from_lake):
        reference[g] = in_lake[unique_ids[g]]
    keep = first & ~from_lake[group]
    same = sha == reference[group]
    rows = keys["row"].to_numpy()
    return rows[keep], int((~keep & same).sum()), rows[~keep & ~same].tolist()


def _drop_known_dead(dead: pa.Table, known_dead) -> tuple[pa.Table, int]:
    """Dead letters already recorded (by an earlier run, or earlier in this input) are duplicates.

    Keys repeat within one input only for broker messages without a position (a classic queue's
    message identified by its body or message id, delivered twice in one batch)."""
    if not dead.num_rows:
        return dead, 0
    keys = dead["raw_sha256"].to_pylist()
    seen = known_dead(keys)
    first: set[str] = set()
    keep = []
    for key in keys:
        keep.append(key not in seen and key not in first)
        first.add(key)
    if all(keep):
        return dead, 0
    fresh = dead.filter(pa.array(keep))
    return fresh, dead.num_rows - fresh.num_rows


def _conflict_dead_letters(events: pa.Table, usage: pa.Table, rows: list[int]) -> pa.Table:
    cols = {c: [] for c in DEAD_COLUMNS + ("file_index",)}
    n_events = events.num_rows
    for row in sorted(rows):
        table, i = (events, row) if row < n_events else (usage, row - n_events)
        source_file = table["source_file"][i].as_py()
        line = table["source_line"][i].as_py()
        row = table.slice(i, 1).to_pylist()[0]
        digest = row["payload_sha256"]
        # the rejected version as parsed (already redacted, email hashed), without provenance columns
        shown = {k: v for k, v in row.items() if v is not None and k not in _PROVENANCE_COLUMNS}
        canonical = orjson.dumps(shown, default=str, option=orjson.OPT_SORT_KEYS).decode()
        event_id = table["event_id"][i].as_py()
        cols["source_file"].append(source_file)
        cols["source_line"].append(line)
        cols["raw"].append(truncate_raw(canonical))
        cols["raw_sha256"].append(dead_letter_key(source_file, line, digest.encode()))
        cols["message"].append(
            f"event_id {event_id[:80]!r} already accepted with a different payload; the first version stays"
        )
        cols["event_id"].append(event_id)
        cols["reason"].append("conflicting_duplicate")
        cols["file_index"].append(table["file_index"][i].as_py())
    return pa.table(cols, schema=DEAD_STAGING)


_PROVENANCE_COLUMNS = {"payload_sha256", "source_file", "source_line", "file_index", "event_date"}


def empty_staging(tag: str) -> pa.Table:
    return {"events": EVENTS_STAGING, "usage": USAGE_STAGING, "dead_letter": DEAD_STAGING}[tag].empty_table()
