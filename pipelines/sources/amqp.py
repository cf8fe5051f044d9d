"""RabbitMQ (AMQP 0-9-1, through pika): publish events and consume them in micro-batches.

URI: ``amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME[&type=stream|classic|quorum][&prefetch=N]``
(the vhost URL-encoded: ``/`` is ``%2F``; user and password default to guest).

- ``queue`` (required): the queue to publish to / consume from.
- ``type``: the queue type to declare when the queue does not exist yet. Without it an existing
  queue is used as it is (its type is probed) and an absent one is declared a durable STREAM
  queue (CONTRACT section 6). A ``type`` that disagrees with an existing queue is an error.
- ``prefetch``: the consumer's prefetch count (default: ``--max-batch-events``, at most 65535).

A stream queue is read by offset (consumer argument ``x-stream-offset``) from the position the
lake records, so a restart replays exactly what the lake does not hold; its messages are acked
only to return credit. A classic or quorum queue cannot replay: its messages are acknowledged
only after the lake commit that holds them; a crash before the ack redelivers them and the
ingest deduplicates them by event id (dead letters by their message id or body digest).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

from transforms.errors import ConfigError, InputError
from transforms.ingest import read_file_chunks

log = logging.getLogger(__name__)

QUEUE_TYPES = ("stream", "classic", "quorum")
MAX_PREFETCH = 65535
CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class AmqpAddress:
    host: str
    port: int
    vhost: str
    queue: str
    user: str = field(default="guest", repr=False)
    password: str = field(default="guest", repr=False)
    queue_type: str | None = None
    prefetch: int | None = None

    @property
    def key(self) -> str:
        """The source's identity without credentials: app transaction ids and dead-letter labels."""
        return f"amqp://{self.host}:{self.port}/{quote(self.vhost, safe='')}?queue={quote(self.queue, safe='')}"

    def parameters(self):
        import pika

        return pika.ConnectionParameters(
            host=self.host, port=self.port, virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            heartbeat=600, blocked_connection_timeout=60, connection_attempts=1,
            socket_timeout=CONNECT_TIMEOUT, stack_timeout=CONNECT_TIMEOUT * 2,
        )  # fmt: skip


def parse_amqp_uri(uri: str) -> AmqpAddress:
    parts = urlsplit(uri)
    if parts.scheme != "amqp":
        raise ConfigError(f"{safe_uri(uri)}: not an amqp:// URI")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"queue", "type", "prefetch"}
    if unknown:
        raise ConfigError(f"{safe_uri(uri)}: unknown parameter(s) {', '.join(sorted(unknown))} (queue, type, prefetch)")
    queue = query.get("queue", "")
    if not queue:
        raise ConfigError(f"{safe_uri(uri)}: give the queue as ?queue=NAME")
    queue_type = query.get("type") or None
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise ConfigError(f"{safe_uri(uri)}: type must be one of {', '.join(QUEUE_TYPES)}")
    prefetch = None
    if "prefetch" in query:
        try:
            prefetch = int(query["prefetch"])
        except ValueError:
            prefetch = 0
        if not 1 <= prefetch <= MAX_PREFETCH:
            raise ConfigError(f"{safe_uri(uri)}: prefetch must be an integer 1..{MAX_PREFETCH}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    try:
        port = parts.port or 5672
    except ValueError:
        raise ConfigError(f"{safe_uri(uri)}: bad port") from None
    return AmqpAddress(
        host=parts.hostname or "localhost", port=port, vhost=unquote(path) if path else "/", queue=queue,
        user=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        queue_type=queue_type, prefetch=prefetch,
    )  # fmt: skip


def safe_uri(uri: str) -> str:
    """A URI for messages: the password replaced."""
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def _config_error(exc: Exception, address: AmqpAddress) -> ConfigError | None:
    """Broker errors that retrying cannot fix (credentials, vhost): configuration errors."""
    import pika.exceptions as px

    if isinstance(exc, px.ProbableAuthenticationError | px.ProbableAccessDeniedError):
        return ConfigError(f"{address.key}: the broker refused the credentials or the vhost ({exc!r})")
    return None


def connect(address: AmqpAddress):
    import pika
    import pika.exceptions as px

    try:
        return pika.BlockingConnection(address.parameters())
    except px.AMQPError as exc:
        error = _config_error(exc, address)
        if error is not None:
            raise error from None
        raise


def declare_queue(connection, address: AmqpAddress) -> tuple[object, str]:
    """Declare the queue (durable) or find the existing one's type; returns ``(channel, type)``.

    An existing queue's type is probed by declaring it with each type in turn: a mismatch
    closes the channel with PRECONDITION_FAILED (406), and a fresh channel tries the next.
    """
    import pika.exceptions as px

    channel = connection.channel()
    try:
        channel.queue_declare(address.queue, passive=True)
        exists = True
    except px.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        exists = False
        channel = connection.channel()
    if not exists:
        queue_type = address.queue_type or "stream"
        channel.queue_declare(address.queue, durable=True, arguments={"x-queue-type": queue_type})
        return channel, queue_type
    candidates = [address.queue_type] if address.queue_type else list(QUEUE_TYPES)
    for queue_type in candidates:
        try:
            channel.queue_declare(address.queue, durable=True, arguments={"x-queue-type": queue_type})
            return channel, queue_type
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            channel = connection.channel()
    if address.queue_type:
        raise ConfigError(f"{address.key}: the queue exists with another type than {address.queue_type} "
                          "(drop type= to use it as it is)")  # fmt: skip
    raise ConfigError(f"{address.key}: the queue exists but is not a durable stream, classic or quorum queue")


# ------------------------------------------------------------------ publish


def read_event_lines(input_dir) -> Iterator[tuple[str, bytes]]:
    """Every line of every event file under ``input_dir`` (path order), as ``(file, line)``."""
    from pipelines.config import discover_input

    for index, path, rel in discover_input(input_dir):
        for chunk in read_file_chunks(path, rel, index):
            if chunk.file_error:
                raise InputError(f"{rel}: {chunk.file_error[1]}")
            for line in chunk.line_list():
                yield rel, line


def publish_lines(uri: str, lines, rate: float | None = None) -> int:
    """Publish each line as one persistent message with publisher confirms; returns the count.

    A message the broker does not confirm (nack, unroutable) raises: nothing is dropped silently.
    ``rate``: at most this many messages per second (a steady rate, for benchmarks).
    """
    import pika

    address = parse_amqp_uri(uri)
    connection = connect(address)
    try:
        channel, _ = declare_queue(connection, address)
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")
        started = time.monotonic()
        sent = 0
        for line in lines:
            if rate:
                wait = started + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            channel.basic_publish("", address.queue, line, properties, mandatory=True)
            sent += 1
        return sent
    finally:
        if connection.is_open:
            connection.close()


def publish_dir(uri: str, input_dir, rate: float | None = None) -> int:
    """``revenue publish``: every line of the event files under ``input_dir``, one message each."""
    return publish_lines(uri, (line for _, line in read_event_lines(input_dir)), rate)


# ------------------------------------------------------------------ consume


@dataclass
class Delivery:
    body: bytes
    label: str  # the dead-letter source: key + '#offset=N' or '#message_id=...' / '#sha256=...'
    position: int
    tag: int  # the channel's delivery tag (acks)


class AmqpConsumer:
    """One connection consuming one queue; ``resume_offset`` is the next stream offset to read."""

    def __init__(self, address: AmqpAddress, prefetch: int):
        self.address = address
        self.prefetch = max(1, min(MAX_PREFETCH, address.prefetch or prefetch))
        self.connection = None
        self.channel = None
        self.queue_type: str | None = None
        self._messages = None
        self.last_seen: int | None = None  # highest stream offset delivered (skip replays below it)

    @property
    def is_stream(self) -> bool:
        return self.queue_type == "stream"

    def open(self, resume_offset: int | None) -> None:
        """Connect, declare, and start consuming (a stream queue from ``resume_offset``, or its first)."""
        self.connection = connect(self.address)
        self.channel, self.queue_type = declare_queue(self.connection, self.address)
        self.channel.basic_qos(prefetch_count=self.prefetch)
        arguments = None
        if self.is_stream:
            arguments = {"x-stream-offset": resume_offset if resume_offset is not None else "first"}
            self.last_seen = resume_offset - 1 if resume_offset is not None else None
        self._messages = self.channel.consume(self.address.queue, auto_ack=False, arguments=arguments,
                                              inactivity_timeout=0.1)  # fmt: skip

    def poll(self) -> Delivery | None:
        """The next message, or None if none arrived within 0.1 s."""
        method, properties, body = next(self._messages)
        if method is None:
            return None
        if self.is_stream:
            offset = int((properties.headers or {})["x-stream-offset"])
            if self.last_seen is not None and offset <= self.last_seen:
                self.channel.basic_ack(method.delivery_tag)  # a replay below the resume point: credit only
                return self.poll()
            self.last_seen = offset
            return Delivery(body, f"{self.address.key}#offset={offset}", offset, method.delivery_tag)
        ident = properties.message_id
        label = f"message_id={quote(ident, safe='')}" if ident else f"sha256={hashlib.sha256(body).hexdigest()}"
        return Delivery(body, f"{self.address.key}#{label}", 0, method.delivery_tag)

    def ack(self, deliveries: list[Delivery]) -> None:
        """After the lake commit: acknowledge (a classic queue forgets them; a stream gets credit)."""
        if deliveries:
            self.channel.basic_ack(deliveries[-1].tag, multiple=True)

    def backlog(self) -> int | None:
        """Messages waiting in a classic/quorum queue (ready, not delivered); None for a stream."""
        if self.is_stream or self.channel is None:
            return None
        return self.channel.queue_declare(self.address.queue, passive=True).method.message_count

    def close(self) -> None:
        connection, self.connection, self.channel, self._messages = self.connection, None, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection: nothing left to save
                log.debug("closing the broker connection failed", exc_info=True)


def delete_queue(uri: str) -> None:
    """Delete the URI's queue (tests and benchmarks clean up after themselves)."""
    address = parse_amqp_uri(uri)
    connection = connect(address)
    try:
        connection.channel().queue_delete(address.queue)
    finally:
        connection.close()
