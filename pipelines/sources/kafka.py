"""Kafka (the Kafka protocol, through kafka-python): publish events and consume them in micro-batches.

URI: ``kafka://HOST:PORT/TOPIC[?partitions=0,1,2][&group=NAME]`` (one bootstrap server; no TLS
or SASL in this release).

- ``partitions``: the partitions to read (``revenue stream``) or to publish to (``revenue
  publish``: keyed by event id, Kafka's default partitioner over these partitions). Default:
  every partition the topic has when the consumer connects. A topic that does not exist yet is
  created with ``max(partitions) + 1`` partitions (one without the parameter).
- ``group``: the consumer group whose committed offsets mirror the lake's positions after each
  commit, for lag monitors (default ``revenue-stream``). The group is never joined: partitions are
  assigned explicitly, and those offsets are advisory; the lake's are the truth.

Each partition is read by offset from the position the lake records (Kafka Connect's HDFS sink
pattern): every batch's Delta commits carry the app transaction
``stream:kafka://HOST:PORT/TOPIC/PARTITION`` = the partition's next offset, so a restart, a
kill or a lost broker reads again exactly what the lake does not hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from transforms.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_GROUP = "revenue-stream"
TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_MS = 5_000  # a broker that does not answer: our backoff retries, not the client


@dataclass(frozen=True)
class KafkaAddress:
    host: str
    port: int
    topic: str
    partitions: tuple[int, ...] | None = None  # None: all of the topic's
    group: str = DEFAULT_GROUP

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """The source's identity (dead-letter labels, logs); a partition's is ``key/PARTITION``."""
        return f"kafka://{self.host}:{self.port}/{self.topic}"

    def partition_key(self, partition: int) -> str:
        return f"{self.key}/{partition}"

    def app_id(self, partition: int) -> str:
        """The Delta app transaction holding the partition's next offset."""
        return f"stream:{self.partition_key(partition)}"


def parse_kafka_uri(uri: str) -> KafkaAddress:
    parts = urlsplit(uri)
    if parts.scheme != "kafka":
        raise ConfigError(f"{uri}: not a kafka:// URI")
    if parts.username or parts.password:
        raise ConfigError(f"{parts.hostname}: kafka:// takes no credentials (SASL is not supported)")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"partitions", "group"}
    if unknown:
        raise ConfigError(f"{uri}: unknown parameter(s) {', '.join(sorted(unknown))} (partitions, group)")
    topic = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not topic or len(topic) > 249 or not set(topic) <= TOPIC_CHARS or topic in (".", ".."):
        raise ConfigError(
            f"{uri}: give one topic as kafka://HOST:PORT/TOPIC (letters, digits, '.', '_', '-')"
        )
    partitions = None
    if "partitions" in query:
        try:
            partitions = tuple(sorted({int(p) for p in query["partitions"].split(",")}))
        except ValueError:
            partitions = ()
        if not partitions or partitions[0] < 0:
            raise ConfigError(f"{uri}: partitions must be a comma-separated list of partition numbers")
    group = query.get("group", DEFAULT_GROUP)
    if not group:
        raise ConfigError(f"{uri}: group must not be empty")
    try:
        port = parts.port or 9092
    except ValueError:
        raise ConfigError(f"{uri}: bad port") from None
    return KafkaAddress(parts.hostname or "localhost", port, topic, partitions, group)


def is_broker_error(exc: BaseException) -> bool:
    from kafka.errors import KafkaError

    return isinstance(exc, KafkaError | OSError)


def ensure_topic(address: KafkaAddress) -> list[int]:
    """The topic's partitions; an absent topic is created first (``max(partitions) + 1`` of them).

    A broker that refuses access is a configuration error (retrying cannot fix it)."""
    from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

    try:
        return _ensure_topic(address)
    except (AuthorizationError, SaslAuthenticationFailedError) as exc:
        raise ConfigError(f"{address.key}: the broker refused access ({type(exc).__name__}: {exc})") from None


def _ensure_topic(address: KafkaAddress) -> list[int]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=address.bootstrap, client_id="revenue", request_timeout_ms=TIMEOUT_MS,
                             bootstrap_timeout_ms=CONNECT_TIMEOUT_MS)  # fmt: skip
    try:
        described = _describe(admin, address)
        if described is None:
            count = max(address.partitions) + 1 if address.partitions else 1
            try:
                admin.create_topics([NewTopic(address.topic, num_partitions=count, replication_factor=1)])
                log.info("created topic %s with %d partition(s)", address.topic, count)
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another client
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while not (described := _describe(admin, address)) or not described["partitions"]:
                if time.monotonic() > deadline:  # a broker error: the stream retries with backoff
                    raise KafkaTimeoutError(f"topic {address.topic} created but not listed with partitions")
                time.sleep(0.1)  # a new topic's metadata can lag behind its creation
        existing = sorted(p["partition_index"] for p in described["partitions"])
    finally:
        admin.close()
    if address.partitions:
        missing = sorted(set(address.partitions) - set(existing))
        if missing:
            raise ConfigError(f"{address.key}: partitions {missing} do not exist (the topic has {existing})")
        return list(address.partitions)
    return existing


def _describe(admin, address: KafkaAddress) -> dict | None:
    """The topic's metadata, or None if it does not exist."""
    from kafka.errors import UnknownTopicOrPartitionError, for_code

    (described,) = [t for t in admin.describe_topics([address.topic]) if t["name"] == address.topic]
    code = described["error_code"]
    if code == UnknownTopicOrPartitionError.errno:
        return None
    if code:
        raise for_code(code)(f"describing topic {address.topic}")
    return described


# ------------------------------------------------------------------ publish


@dataclass
class Published:
    count: int
    last_offsets: dict[int, int]  # partition -> offset of the last message this call wrote there


def event_key(line: bytes) -> bytes | None:
    """A message's key: the event's ``event_id`` (None for a line that is not an event object)."""
    import orjson

    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return event_id.encode() if isinstance(event_id, str) and event_id else None


def choose_partition(key: bytes | None, partitions: list[int], sent: int) -> int:
    """Kafka's default partitioner (murmur2 of the key) over ``partitions``; round-robin unkeyed."""
    from kafka.partitioner.default import murmur2

    if key is None:
        return partitions[sent % len(partitions)]
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def publish_lines(uri: str, lines, rate: float | None = None) -> Published:
    """Publish each line as one message (acks from all in-sync replicas, idempotent producer),
    keyed by its event id; returns once every send is acknowledged.

    Every version of an event (a retry, a conflicting correction) goes to one partition, whose
    order Kafka keeps, so the first published wins a conflict as in a batch run. A send the
    broker does not acknowledge raises: nothing is dropped silently. ``rate``: at most this many
    messages per second (a steady rate, for benchmarks).
    """
    from kafka import KafkaProducer

    address = parse_kafka_uri(uri)
    partitions = ensure_topic(address)
    producer = KafkaProducer(bootstrap_servers=address.bootstrap, client_id="revenue-publish", acks="all",
                             linger_ms=5, request_timeout_ms=TIMEOUT_MS,
                             bootstrap_timeout_ms=CONNECT_TIMEOUT_MS)  # fmt: skip
    result = Published(0, {})
    try:
        started = time.monotonic()
        pending = []
        for line in lines:
            if rate:
                wait = started + result.count / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            key = event_key(line)
            pending.append(producer.send(address.topic, value=bytes(line), key=key,
                                         partition=choose_partition(key, partitions, result.count)))  # fmt: skip
            result.count += 1
            if len(pending) >= 10_000:
                _confirm(producer, pending, result)
        _confirm(producer, pending, result)
        return result
    finally:
        producer.close(timeout=TIMEOUT_MS / 1000)


def _confirm(producer, pending: list, result: Published) -> None:
    producer.flush(timeout=TIMEOUT_MS / 1000)
    for future in pending:
        written = future.get(timeout=TIMEOUT_MS / 1000)  # raises the broker's error for that message
        result.last_offsets[written.partition] = max(
            written.offset, result.last_offsets.get(written.partition, -1)
        )
    pending.clear()


def publish_dir(uri: str, input_dir, rate: float | None = None) -> int:
    """``revenue publish``: every line of the event files under ``input_dir``, one message each."""
    from pipelines.sources.amqp import read_event_lines

    return publish_lines(uri, (line for _, line in read_event_lines(input_dir)), rate).count


# ------------------------------------------------------------------ consume


@dataclass
class Record:
    body: bytes
    partition: int
    offset: int

    def label(self, address: KafkaAddress) -> str:
        """The dead-letter source: ``kafka://HOST:PORT/TOPIC/PARTITION#offset=N``."""
        return f"{address.partition_key(self.partition)}#offset={self.offset}"


class KafkaReader:
    """One consumer reading assigned partitions from given offsets (no group membership)."""

    def __init__(self, address: KafkaAddress, max_records: int):
        self.address = address
        self.max_records = max_records
        self.consumer = None
        self.partitions: list[int] = []
        self.commit_refused = False  # warned once

    def open(self, partitions: list[int], next_offsets: dict[int, int]) -> None:
        """Connect, assign ``partitions`` and seek each to its next offset (absent: the earliest)."""
        from kafka import KafkaConsumer, TopicPartition

        self.partitions = list(partitions)
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.address.bootstrap, client_id="revenue-stream", group_id=self.address.group,
            enable_auto_commit=False, auto_offset_reset="earliest", allow_auto_create_topics=False,
            isolation_level="read_committed",  # a transactional producer's aborted messages are not events
            request_timeout_ms=TIMEOUT_MS, bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
            max_poll_records=self.max_records,
        )  # fmt: skip
        assigned = [TopicPartition(self.address.topic, p) for p in self.partitions]
        self.consumer.assign(assigned)
        for tp in assigned:
            if tp.partition in next_offsets:
                self.consumer.seek(tp, next_offsets[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)

    def poll(self, limit: int, timeout: float = 0.1) -> list[Record]:
        """Up to ``limit`` records, waiting at most ``timeout`` seconds for the first ones."""
        fetched = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=limit)
        records = []
        for tp, messages in fetched.items():
            records += [
                Record(m.value if m.value is not None else b"", tp.partition, m.offset) for m in messages
            ]
        return records

    def probe(self) -> None:
        """Ask the broker for something (a partition's first offset): kafka-python reconnects
        silently inside ``poll``, so an idle consumer would never notice a lost broker. Raises
        ``KafkaTimeoutError`` when it does not answer."""
        from kafka import TopicPartition

        self.consumer.beginning_offsets([TopicPartition(self.address.topic, self.partitions[0])],
                                        timeout_ms=CONNECT_TIMEOUT_MS)  # fmt: skip

    def commit(self, next_offsets: dict[int, int]) -> None:
        """Mirror the lake's positions into the group's committed offsets (advisory).

        A commit the group refuses (e.g. the group id is in use by members of a subscribed
        group, or not authorized) is logged and skipped: no data depends on it. A lost
        connection raises (the stream reconnects)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if not next_offsets:
            return
        try:
            self.consumer.commit({TopicPartition(self.address.topic, p): OffsetAndMetadata(o, "", -1)
                                  for p, o in next_offsets.items()}, timeout_ms=TIMEOUT_MS)  # fmt: skip
        except KafkaError as exc:
            if exc.retriable:
                raise
            if not self.commit_refused:
                log.warning("group %s refused the advisory offset commit (%s: %s); the lake keeps the positions, "
                            "lag monitors reading the group will not see them", self.address.group,
                            type(exc).__name__, exc)  # fmt: skip
            self.commit_refused = True

    def lag(self) -> int | None:
        """Messages past the consumer's position: each partition's high watermark (from the last
        fetch) minus its position; None until every partition has been fetched once."""
        from kafka import TopicPartition

        total = 0
        for p in self.partitions:
            tp = TopicPartition(self.address.topic, p)
            high = self.consumer.highwater(tp)
            if high is None:
                return None
            total += max(0, high - self.consumer.position(tp, timeout_ms=TIMEOUT_MS))
        return total

    def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001 - closing a broken connection: nothing left to save
                log.debug("closing the Kafka consumer failed", exc_info=True)


def delete_topic(uri: str) -> None:
    """Delete the URI's topic (tests and benchmarks clean up after themselves)."""
    from kafka import KafkaAdminClient

    address = parse_kafka_uri(uri)
    admin = KafkaAdminClient(bootstrap_servers=address.bootstrap, request_timeout_ms=TIMEOUT_MS)
    try:
        admin.delete_topics([address.topic])
    finally:
        admin.close()
