"""`revenue stream`: live mode (CONTRACT section 6). Micro-batches of bounded Beam ingests.

    loop: collect a batch from the source (bounded by --max-batch-events and --max-batch-seconds)
          -> ingest_batch (the bounded Beam ingest; the source position in the same Delta commits)
          -> acknowledge at the broker (advisory: the lake's position is the truth)
          -> every --publish-every seconds, if something was committed: metrics, dbt build, gate, publish

Exactly once: a stream queue or a Kafka partition resumes from the offset the lake records; a
classic/quorum queue is acknowledged only after the commit, and what it redelivers after a crash
is deduplicated by event id (dead letters by their message identity); a landing folder's files
are recorded one by one in the commits. The Beam ingest's deduplication makes any replay harmless.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines import lake
from pipelines.child import PreparedChild, release_memory
from pipelines.config import RunConfig
from pipelines.ingest import INGEST_TABLES, MessageBatch, ingest_batch
from pipelines.manifest import new_run_id, write_manifest
from transforms.errors import ConfigError, LakeError, QualityGateFailed, RevenueError
from transforms.messages import MessageSource

log = logging.getLogger(__name__)
batch_log = logging.getLogger("revenue.stream")  # one JSON line per batch and per publish

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
LOCK_RETRY_SECONDS = 0.2
IDLE_POLL_SECONDS = 1.0  # an empty source is looked at this often (stop, idle and publish checks)


@dataclass(frozen=True)
class StreamOptions:
    source: str
    max_batch_events: int = 10_000
    max_batch_seconds: float = 5.0
    publish_every: float = 30.0
    metrics_port: int | None = None
    stop_after_idle: float | None = None
    warehouse: bool = True  # False: the lake only (library use: tests, benchmarks of the lake path)

    def __post_init__(self):
        if self.max_batch_events < 1 or self.max_batch_seconds <= 0 or self.publish_every < 0:
            raise ConfigError("--max-batch-events must be >= 1, --max-batch-seconds > 0, --publish-every >= 0")


@dataclass
class Batch:
    count: int  # messages or files
    app_transactions: dict[str, int]
    metadata: dict[str, str]
    messages: MessageBatch | None = None
    files: list[tuple[int, str, str]] | None = None
    acks: list | dict = field(default_factory=list)  # what acknowledge() confirms at the source
    first_received: float = 0.0  # wall clock of the first message (lag figures)


class _BatchWindow:
    """When a batch closes: ``--max-batch-seconds`` after its first message reached the consumer.

    Messages that arrive while the previous batch commits wait in the client's buffer (the broker
    pushes up to the prefetch count); their window counts from the end of the previous collection,
    not from when the loop comes back to read them, so the commit time is not paid twice (once
    waiting for the commit, once more waiting for a fresh window). What is already buffered when
    that window has run out is still read (``DRAIN_SECONDS`` at least), so a batch is never cut
    to a single message. After an idle poll the next batch's window starts at its first message.
    """

    DRAIN_SECONDS = 0.25

    def __init__(self, max_batch_seconds: float):
        self.max_batch_seconds = max_batch_seconds
        self.resume_at: tuple[float, float] | None = None  # (monotonic, wall) the previous collection ended

    def start(self) -> None:
        self.started = time.monotonic()
        self.first: tuple[float, float] | None = None

    def received(self, now: float) -> None:
        if self.first is None:
            self.first = self.resume_at if self.resume_at is not None else (now, time.time())

    def closed(self, now: float) -> bool:
        return self.first is not None and now >= max(self.first[0] + self.max_batch_seconds,
                                                     self.started + self.DRAIN_SECONDS)  # fmt: skip

    def finish(self, got_batch: bool) -> float:
        """The collection ended; returns the batch's first-message wall clock (0.0: no batch)."""
        self.resume_at = (time.monotonic(), time.time()) if got_batch else None
        return self.first[1] if got_batch and self.first is not None else 0.0


# ------------------------------------------------------------------ sources


class AmqpStreamSource:
    """A RabbitMQ queue: stream queues by offset from the lake's position, others acked after commit."""

    def __init__(self, uri: str, options: StreamOptions):
        from pipelines.sources.amqp import parse_amqp_uri

        self.address = parse_amqp_uri(uri)
        self.key = self.address.key
        self.app_id = f"stream:{self.key}"
        self.options = options
        self.window = _BatchWindow(options.max_batch_seconds)
        self.consumer = None
        self.batches = 0  # a classic queue's batch counter (its app transaction: no replayable position)

    def open(self, layout) -> None:
        from pipelines.sources.amqp import AmqpConsumer

        recorded = [lake.app_version(layout, t, self.app_id) for t in INGEST_TABLES]
        position = None if any(v is None for v in recorded) else min(recorded)
        self.window.resume_at = None
        self.consumer = AmqpConsumer(self.address, self.options.max_batch_events)
        self.consumer.open(position + 1 if position is not None else None)
        self.batches = max((v for v in recorded if v is not None), default=0)
        log.info("consuming %s (%s queue) from %s", self.key, self.consumer.queue_type,
                 f"offset {position + 1}" if self.consumer.is_stream and position is not None else
                 "the first offset" if self.consumer.is_stream else "what the queue holds")  # fmt: skip

    def collect(self, should_stop) -> Batch | None:
        deliveries = []
        window = self.window
        window.start()
        while True:
            delivery = self.consumer.poll()
            now = time.monotonic()
            if delivery is not None:
                window.received(now)
                deliveries.append(delivery)
                if len(deliveries) >= self.options.max_batch_events:
                    break
            if window.closed(now):
                break
            if not deliveries and (now - window.started >= IDLE_POLL_SECONDS or should_stop()):
                window.finish(False)
                return None
            if should_stop():
                break  # finish the batch in hand
        first_wall = window.finish(True)
        bodies = [d.body for d in deliveries]
        sources = [MessageSource.of(d.label, d.position, d.body) for d in deliveries]
        if self.consumer.is_stream:
            version = deliveries[-1].position
            first, last = str(deliveries[0].position), str(deliveries[-1].position)
        else:
            self.batches += 1
            version, first, last = self.batches, "", ""
        metadata = {"stream_source": self.key, "stream_messages": str(len(deliveries)),
                    "stream_first_offset": first, "stream_last_offset": last}  # fmt: skip
        return Batch(len(deliveries), {self.app_id: version}, metadata, messages=MessageBatch(bodies, sources),
                     acks=deliveries, first_received=first_wall)  # fmt: skip

    def acknowledge(self, batch: Batch) -> None:
        self.consumer.ack(batch.acks)

    def lag(self) -> int | None:
        """Messages the lake does not hold yet: a classic queue's ready count; a stream's
        message count minus the next offset (exact while the stream has not been truncated)."""
        consumer = self.consumer
        if consumer is None or consumer.channel is None:
            return None
        if consumer.is_stream:
            total = consumer.channel.queue_declare(self.address.queue, passive=True).method.message_count
            return max(0, total - (consumer.last_seen + 1 if consumer.last_seen is not None else 0))
        return consumer.backlog()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    @staticmethod
    def is_broker_error(exc: BaseException) -> bool:
        import pika.exceptions as px

        return isinstance(exc, px.AMQPError | OSError)


class KafkaStreamSource:
    """A Kafka topic: assigned partitions read by offset from the lake's positions; the group's
    committed offsets are set to the same positions after each commit (advisory)."""

    def __init__(self, uri: str, options: StreamOptions):
        from pipelines.sources.kafka import parse_kafka_uri

        self.address = parse_kafka_uri(uri)
        self.key = self.address.key
        self.options = options
        self.window = _BatchWindow(options.max_batch_seconds)
        self.reader = None

    def positions(self, layout, partitions) -> dict[int, int]:
        """Each partition's next offset as every ingest table records it (the smallest: a kill
        between a batch's table commits leaves the earlier tables ahead); absent: not recorded."""
        found = {}
        for partition in partitions:
            recorded = [lake.app_version(layout, t, self.address.app_id(partition)) for t in INGEST_TABLES]
            if all(v is not None for v in recorded):
                found[partition] = min(recorded)
        return found

    def open(self, layout) -> None:
        from pipelines.sources.kafka import KafkaReader, ensure_topic

        partitions = ensure_topic(self.address)
        resume = self.positions(layout, partitions)
        self.window.resume_at = None
        self.reader = KafkaReader(self.address, self.options.max_batch_events)
        self.reader.open(partitions, resume)
        log.info("consuming %s partitions %s from %s", self.key, partitions,
                 ", ".join(f"{p}:{resume.get(p, 'earliest')}" for p in partitions))  # fmt: skip

    def collect(self, should_stop) -> Batch | None:
        records = []
        window = self.window
        window.start()
        while True:
            got = self.reader.poll(self.options.max_batch_events - len(records))
            now = time.monotonic()
            if got:
                window.received(now)
                records += got
                if len(records) >= self.options.max_batch_events:
                    break
            if window.closed(now):
                break
            if not records and (now - window.started >= IDLE_POLL_SECONDS or should_stop()):
                window.finish(False)
                if not should_stop():
                    self.reader.probe()  # idle: is the broker still there? (raises if not)
                return None
            if should_stop():
                break  # finish the batch in hand
        first_wall = window.finish(True)
        first: dict[int, int] = {}
        following: dict[int, int] = {}  # partition -> next offset after the batch
        for r in records:
            first.setdefault(r.partition, r.offset)
            following[r.partition] = max(following.get(r.partition, 0), r.offset + 1)
        bodies = [r.body for r in records]
        sources = [MessageSource.of(r.label(self.address), r.offset, r.body) for r in records]
        metadata = {"stream_source": self.key, "stream_messages": str(len(records)),
                    "stream_first_offset": ",".join(f"{p}:{o}" for p, o in sorted(first.items())),
                    "stream_last_offset": ",".join(f"{p}:{o - 1}" for p, o in sorted(following.items()))}  # fmt: skip
        return Batch(len(records), {self.address.app_id(p): o for p, o in following.items()}, metadata,
                     messages=MessageBatch(bodies, sources), acks=following, first_received=first_wall)  # fmt: skip

    def acknowledge(self, batch: Batch) -> None:
        self.reader.commit(batch.acks)

    def lag(self) -> int | None:
        return self.reader.lag() if self.reader is not None else None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    @staticmethod
    def is_broker_error(exc: BaseException) -> bool:
        from pipelines.sources.kafka import is_broker_error

        return is_broker_error(exc)


class FileStreamSource:
    """A landing folder: each settled new event file once, whole; up to --max-batch-events files a batch."""

    def __init__(self, uri: str, options: StreamOptions):
        from pipelines.sources.files import parse_file_uri

        self.folder = parse_file_uri(uri)
        self.key = self.folder.key
        self.options = options
        self.layout = None
        self.pending: list[str] = []

    def open(self, layout) -> None:
        self.layout = layout

    def _look(self) -> list[str]:
        from pipelines.sources.files import candidate_files, ingested_files

        rels = candidate_files(self.folder)
        done = ingested_files(self.layout, self.folder, rels)
        self.pending = [r for r in rels if r not in done]
        return self.pending

    def collect(self, should_stop) -> Batch | None:
        started = time.monotonic()
        while not self._look():
            if time.monotonic() - started >= IDLE_POLL_SECONDS or should_stop():
                return None
            time.sleep(0.2)
        rels, self.pending = self.pending[: self.options.max_batch_events], self.pending[self.options.max_batch_events:]
        files = [(i, str(self.folder.path / rel), rel) for i, rel in enumerate(rels)]
        return Batch(len(files), {self.folder.file_app_id(rel): 1 for rel in rels},
                     {"stream_source": self.key, "stream_files": str(len(files))}, files=files,
                     first_received=time.time())  # fmt: skip

    def acknowledge(self, batch: Batch) -> None:
        pass

    def lag(self) -> int | None:
        return len(self.pending)

    def close(self) -> None:
        pass

    @staticmethod
    def is_broker_error(exc: BaseException) -> bool:
        return False


def open_source(uri: str, options: StreamOptions):
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "amqp":
        return AmqpStreamSource(uri, options)
    if scheme == "file":
        return FileStreamSource(uri, options)
    if scheme == "kafka":
        return KafkaStreamSource(uri, options)
    raise ConfigError(f"--source {uri.split('@')[-1]}: unsupported scheme (amqp://, kafka://, file://)")


# ------------------------------------------------------------------ observability


class StreamMetrics:
    """Prometheus metrics of one consumer (own registry: one consumer per process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.messages = Counter("revenue_stream_messages", "Messages (or files) consumed and committed", registry=r)
        self.lines = Counter("revenue_stream_events", "Lines committed by outcome", ["outcome"], registry=r)
        self.dead = Counter("revenue_stream_dead_letters", "Dead letters by reason", ["reason"], registry=r)
        self.batches = Counter("revenue_stream_batches", "Batches committed to the lake", registry=r)
        self.batch_seconds = Histogram("revenue_stream_batch_seconds", "Ingest and commit time of a batch",
                                       buckets=(0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60), registry=r)  # fmt: skip
        self.publish_seconds = Histogram("revenue_stream_publish_seconds", "Metrics, dbt build, gate and publish time",
                                         buckets=(2, 5, 10, 20, 30, 45, 60, 90, 120, 300), registry=r)  # fmt: skip
        self.publishes = Counter("revenue_stream_publishes", "Warehouse publish attempts by status", ["status"],
                                 registry=r)  # fmt: skip
        self.lag = Gauge("revenue_stream_consumer_lag", "Messages (files) at the source not yet in the lake "
                         "(NaN when unknown)", registry=r)  # fmt: skip
        self.lag.set(math.nan)
        self.compacted = Counter("revenue_stream_compacted_files", "Small lake files merged by the batches' "
                                 "compactions", registry=r)  # fmt: skip
        self.reconnects = Counter("revenue_stream_broker_reconnects", "Broker connection losses retried", registry=r)
        self.connected = Gauge("revenue_stream_broker_connected", "1 while connected to the source", registry=r)
        self.last_commit = Gauge("revenue_stream_last_commit_timestamp_seconds", "Wall clock of the last lake commit",
                                 registry=r)  # fmt: skip
        self.published_received = 0.0  # wall clock the newest published message was received
        Gauge("revenue_stream_newest_published_event_age_seconds",
              "Seconds since the newest message in the published warehouse was received (NaN before the first publish)",
              registry=r).set_function(
            lambda: time.time() - self.published_received if self.published_received else math.nan)  # fmt: skip
        self.healthy = True
        self.server = None

    def record_batch(self, batch: Batch, result, seconds: float) -> None:
        self.messages.inc(batch.count)
        self.batches.inc()
        for outcome, n in (("written", result.rows_written), ("duplicate", result.duplicates),
                           ("dead_letter", result.dead_letters)):  # fmt: skip
            self.lines.labels(outcome).inc(n)
        for reason, n in result.dead_letters_by_reason.items():
            self.dead.labels(reason).inc(n)
        self.batch_seconds.observe(seconds)
        self.last_commit.set(time.time())
        self.compacted.inc(sum(c["files_removed"] for c in result.compacted.values()))

    def serve(self, port: int) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    status, body, kind = 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    status = 200 if metrics.healthy else 503
                    body, kind = json.dumps({"status": "ok" if metrics.healthy else "broker unreachable"}).encode(), \
                        "application/json"  # fmt: skip
                else:
                    status, body, kind = 404, b"not found\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from None
        threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _emit(record: dict) -> None:
    batch_log.info(json.dumps(record, sort_keys=True))


# ------------------------------------------------------------------ the warehouse


def publish_warehouse(config: RunConfig, run_id: str) -> dict:
    """Metrics -> dbt build -> quality gate -> atomic publish, as ``revenue run`` chains them.

    The one place the stream refreshes the warehouse: as the stages become incremental, so does this.
    Each stage waits while a batch commit holds the lake. Raises ``QualityGateFailed`` (the
    published warehouse stays) or another ``RevenueError``.
    """
    from pipelines.metrics import run_metrics
    from pipelines.quality import warehouse_gate
    from pipelines.transform import LAKE_SOURCES, prepare_ahead, run_transform

    started = time.monotonic()
    config = config.resolve_as_of()
    prepare_ahead(config)  # the waiting dbt parses the project while the metrics run
    metrics = _waiting_for_lake(lambda: run_metrics(config, run_id=run_id, write_run_manifest=False))
    release_memory()  # what the metrics freed goes back before the lake copy's load takes DuckDB's share
    # the build reads the events and usage versions the metrics read (batches go on committing meanwhile)
    # and the derived tables those metrics wrote; the dead letters as they are now
    pinned = {**lake.versions(config.layout, ("dead_letter",)),
              **{t: v for t, v in metrics.lake_versions.items() if t in LAKE_SOURCES}}  # fmt: skip
    gate = warehouse_gate(config, run_id=run_id)
    transform_started = time.monotonic()
    transform = _waiting_for_lake(lambda: run_transform(config, gate=gate, run_id=run_id, write_run_manifest=False,
                                                        pinned=pinned))  # fmt: skip
    # beside the stages: the as-of date, waits for the lake, returning the metrics' memory
    other = (transform_started - started) - metrics.seconds + (time.monotonic() - transform_started) - transform.seconds
    return {"as_of": config.as_of.isoformat(), "lake_versions": transform.lake_versions,
            "stages": {"metrics": metrics.seconds, "transform": transform.seconds,
                       "dbt_build": transform.dbt_seconds, "metrics_mode": metrics.mode,
                       "metrics_reason": metrics.reason, "other": round(other, 3),
                       "load": {k: transform.lake_load.get(k) for k in ("mode", "seconds", "rows_compared")}},
            "metrics_lake_versions": metrics.lake_versions}  # fmt: skip


def _waiting_for_lake(step):
    """Run ``step``; while another writer (the stream's own batch commit, a batch run) holds the lake, wait."""
    waited = 0.0
    while True:
        try:
            return step()
        except LakeError as exc:
            if "lock held" not in str(exc):
                raise
            if waited == 0.0:
                log.info("%s; waiting", exc)
            time.sleep(LOCK_RETRY_SECONDS)
            waited += LOCK_RETRY_SECONDS


def _warm_publisher() -> None:
    """In a publishing process, before its publish is asked for: the stages' imports (Beam, dbt's
    orchestration, Great Expectations: seconds) and a dbt waiting for the build."""
    import pipelines.metrics  # noqa: F401
    import pipelines.quality
    import pipelines.transform

    pipelines.quality.import_gx()

    pipelines.transform.prewarm_dbt()


class _PublishProcess:
    """The child processes that run ``publish_warehouse``: their Python work (metrics, the gate) does
    not share the consumer's interpreter lock, so batches keep their pace while the warehouse is rebuilt.

    One process per publish, started as soon as the previous publish ends (or runs past
    ``--publish-every``), so its imports load while the consumer waits for the next interval, not
    inside the publish. A process kept for many
    publishes grows: four identical full publishes of a 300k-event lake in one process left it at
    680, 782, 795 and 853 MB after returning freed memory to the system, against 783 MB peak for a
    fresh one; over a 10-minute stream at 500/s the process kept for 40 publishes reached 1,131 MB.
    Ctrl-C does not reach it (the consumer finishes its batch, then publishes); a consumer that
    exits mid-publish (a second signal) ends it."""

    def __init__(self):
        self.child: PreparedChild | None = None  # started, waiting for its publish
        self.exiting: list[PreparedChild] = []  # processes that answered, reaped once they have exited

    def ensure_started(self) -> None:
        """Start the next publish's process if none is waiting; call from the consumer's main thread
        (see child.die_with_parent)."""
        self.exiting = [c for c in self.exiting if not c.exited()]
        if self.child is None:
            self.child = PreparedChild("publishing", warm=_warm_publisher, interruptible=False, daemon=True)

    def publish(self, config: RunConfig, run_id: str) -> dict:
        """Run one publish in the waiting process, which then exits on its own (its interpreter's
        teardown, 1-2.6 s after a publish, is not part of the publish); a crash raises StageCrashed."""
        child, self.child = self.child, None
        self.exiting.append(child)
        return child.call(publish_warehouse, config, run_id, wait=False)

    def stop(self) -> None:
        """End the process waiting for a publish that will not come (with its waiting dbt), and wait
        for the others to exit."""
        if self.child is not None:
            self.child.close()
            self.child = None
        for child in self.exiting:
            child.end(timeout=30)
        self.exiting = []


class _WarehousePublisher:
    """Publishes the warehouse in a background thread, one publish at a time, so batches keep
    flowing into the lake meanwhile (the two share the lake lock only while metrics read it)."""

    def __init__(self, config: RunConfig, metrics: StreamMetrics, result: StreamResult):
        self.config, self.metrics, self.result = config, metrics, result
        self.thread: threading.Thread | None = None
        self.crash: BaseException | None = None
        self.worker = _PublishProcess()

    def prepare(self) -> None:
        """Start the publishing process ahead of the first publish (its imports take seconds)."""
        self.worker.ensure_started()

    def close(self) -> None:
        self.worker.stop()

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, reason: str, received: float) -> None:
        self.worker.ensure_started()  # here, in the consumer's main thread
        self.thread = threading.Thread(target=self._run, args=(reason, received), name="publish-warehouse",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.crash is not None:
            raise self.crash

    def check(self) -> None:
        """Raise, in the consumer's thread, a bug that stopped a publish."""
        if self.crash is not None and not self.busy:
            raise self.crash

    def _run(self, reason: str, received: float) -> None:
        run_id = new_run_id()
        started = time.monotonic()
        record = {"kind": "publish", "run_id": run_id, "reason": reason}
        try:
            record.update(self.worker.publish(self.config, run_id))
            record["status"] = "success"
            self.metrics.published_received = received
            self.result.publishes += 1
        except QualityGateFailed as exc:
            record.update(status="quality_gate_failed", error=str(exc))
            self.result.publish_failures += 1
            log.error("quality gate failed; the previous warehouse stays published: %s", exc)
        except RevenueError as exc:
            record.update(status="error", error=str(exc))
            self.result.publish_failures += 1
            log.error("publishing the warehouse failed; the previous one stays published: %s", exc)
        except BaseException as exc:  # a bug: the consumer's thread re-raises it
            record.update(status="crashed", error=f"{type(exc).__name__}: {exc}")
            self.crash = exc
        seconds = time.monotonic() - started
        self.metrics.publish_seconds.observe(seconds)
        self.metrics.publishes.labels(record["status"]).inc()
        record["seconds"] = round(seconds, 3)
        _emit(record)


# ------------------------------------------------------------------ the loop


class _Stop:
    """SIGTERM/SIGINT (or ``stop_event``, for a consumer run in a thread): finish the batch in
    hand, publish, exit 0. A second signal stops at once."""

    def __init__(self, event: threading.Event | None = None):
        self.signalled = False
        self.event = event
        self.previous = {}

    @property
    def requested(self) -> bool:
        return self.signalled or (self.event is not None and self.event.is_set())

    def __call__(self, signum, frame):
        if self.signalled:
            raise KeyboardInterrupt  # second signal: abandon (the lake is safe under a kill anyway)
        self.signalled = True
        log.warning("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class StreamResult:
    batches: int = 0
    messages: int = 0
    publishes: int = 0
    publish_failures: int = 0
    reconnects: int = 0
    stopped_by: str = ""


def run_stream(config: RunConfig, options: StreamOptions, metrics: StreamMetrics | None = None,
               stop_event: threading.Event | None = None) -> StreamResult:  # fmt: skip
    """Consume ``options.source`` into the lake and republish the warehouse until stopped.

    Returns when ``--stop-after-idle`` seconds pass with no message (after a last publish) or on
    SIGTERM/SIGINT (or once ``stop_event`` is set); a broker that is down or lost is retried with
    exponential backoff.
    """
    config = config.with_pii()
    layout = config.layout
    source = open_source(options.source, options)
    stream_run_id = new_run_id()  # the consumer's manifest (each batch and publish has its own run id)
    metrics = metrics or StreamMetrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
    stop = _Stop(stop_event)
    stop.install()
    result = StreamResult()
    last_message = time.monotonic()
    last_publish = time.monotonic()
    unpublished = False
    newest_received = 0.0
    backoff = BACKOFF_FIRST
    connected = False

    publisher = _WarehousePublisher(config, metrics, result)
    if options.warehouse:
        publisher.prepare()

    def publish(reason: str) -> None:
        """Start a background publish of what the lake holds now (if none is running)."""
        nonlocal unpublished, last_publish
        publisher.start(reason, newest_received)
        unpublished = False  # a failed publish waits for new data (or the next interval) to try again
        last_publish = time.monotonic()

    def _lost(exc: BaseException) -> bool:
        nonlocal backoff
        metrics.connected.set(0)
        _broker_lost(source, metrics, result, exc, backoff, stop)
        backoff = min(BACKOFF_MAX, backoff * 2)
        return False

    try:
        while not stop.requested:
            if options.stop_after_idle is not None and time.monotonic() - last_message >= options.stop_after_idle:
                result.stopped_by = "idle"  # a source that stays unreachable is idle too
                break
            if not connected:
                try:
                    source.open(layout)
                    connected, backoff = True, BACKOFF_FIRST
                    metrics.connected.set(1)
                    metrics.healthy = True
                except Exception as exc:
                    if not source.is_broker_error(exc):
                        raise
                    _lost(exc)
                    continue
            try:
                batch = source.collect(lambda: stop.requested)
            except Exception as exc:
                if not source.is_broker_error(exc):
                    raise
                connected = _lost(exc)
                continue
            if batch is not None:
                _commit_batch(config, source, batch, metrics, result)
                last_message = time.monotonic()
                newest_received = time.time()
                unpublished = True
            try:
                if batch is not None:
                    source.acknowledge(batch)  # only now: the lake holds the batch (a lost ack means a redelivery)
                lag = source.lag()
                metrics.lag.set(math.nan if lag is None else lag)
            except Exception as exc:
                if not source.is_broker_error(exc):
                    raise
                connected = _lost(exc)
                continue
            now = time.monotonic()
            publisher.check()
            if options.warehouse and (not publisher.busy or now - last_publish >= options.publish_every):
                # the next publish's process starts from this (main) thread once the current publish is
                # over, or once it runs past --publish-every: the next is then due as soon as it ends,
                # and its process would still be importing its stages (4 s idle, ~10 s on a busy
                # machine); two processes side by side only then
                publisher.prepare()
            if unpublished and options.warehouse and not publisher.busy and now - last_publish >= options.publish_every:
                publish("interval")
        else:
            result.stopped_by = "signal"
        publisher.wait()
        if unpublished and options.warehouse:
            publish("stop")
            publisher.wait()
    except KeyboardInterrupt:  # a second signal: the batch in hand is abandoned (never half-committed)
        result.stopped_by = "abandoned"
        log.warning("stopped at once by a second signal; an uncommitted batch will be read again")
    finally:
        stop.restore()
        source.close()
        metrics.stop()
        if not publisher.busy:  # a second signal may leave a publish running: the process dies with us
            publisher.close()
    summary = {"stopped_by": result.stopped_by, "batches": result.batches, "messages": result.messages,
               "publishes": result.publishes, "publish_failures": result.publish_failures,
               "reconnects": result.reconnects}  # fmt: skip
    write_manifest(layout, stream_run_id, "stream", {
        "config": config.describe(), "source": source.key, "status": "stopped", **summary,
        "lake_versions": lake.versions(layout),
    })  # fmt: skip
    _emit({"kind": "stop", "run_id": stream_run_id, **summary})
    return result


def _broker_lost(source, metrics: StreamMetrics, result: StreamResult, exc: BaseException, backoff: float,
                 stop: _Stop) -> None:  # fmt: skip
    """Drop the connection (the uncommitted batch is redelivered or replayed) and wait ``backoff``."""
    source.close()
    metrics.reconnects.inc()
    metrics.healthy = False
    result.reconnects += 1
    error = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
    log.warning("source %s unavailable (%s); retrying in %.1fs", source.key, error, backoff)
    _emit({"kind": "broker_unavailable", "error": error, "retry_in": backoff})
    deadline = time.monotonic() + backoff
    while time.monotonic() < deadline and not stop.requested:
        time.sleep(min(0.2, backoff))


def _commit_batch(config: RunConfig, source, batch: Batch, metrics: StreamMetrics, result: StreamResult) -> None:
    """Ingest and commit a batch (waiting while another run holds the lake); the caller acknowledges it."""
    run_id = new_run_id()
    started = time.monotonic()
    while True:
        try:
            ingested = ingest_batch(config, files=batch.files, messages=batch.messages,
                                    app_transactions=batch.app_transactions, metadata=batch.metadata, run_id=run_id)
            break
        except LakeError as exc:
            if "lock held" not in str(exc):
                raise
            log.debug("%s; retrying the batch", exc)  # usually the stream's own publish reading the lake
            time.sleep(LOCK_RETRY_SECONDS)
            run_id = new_run_id()
    seconds = time.monotonic() - started
    metrics.record_batch(batch, ingested, seconds)
    result.batches += 1
    result.messages += batch.count
    _emit({"kind": "batch", "run_id": run_id, "source": source.key, "messages": batch.count, **ingested.counts(),
           "position": batch.metadata.get("stream_last_offset") or None, "lake_versions": ingested.lake_versions,
           "seconds": round(seconds, 3), "compacted": ingested.compacted or None,
           "lag_seconds": round(time.time() - batch.first_received, 3) if batch.first_received else None})  # fmt: skip
