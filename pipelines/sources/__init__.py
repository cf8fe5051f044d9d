"""Live-mode sources and sinks by URI scheme: ``amqp://`` (RabbitMQ), ``kafka://`` and ``file://`` (landing folders)."""

from __future__ import annotations

from transforms.errors import BrokerUnavailable, ConfigError


def publish_dir(uri: str, input_dir, rate: float | None = None) -> int:
    """``revenue publish``: every line of the event files under ``input_dir`` as one message to ``uri``.

    A broker that cannot be reached or does not confirm a message raises ``BrokerUnavailable``
    (exit 1); what was confirmed before stays published, so a rerun publishes those again."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "amqp":
        from pika.exceptions import AMQPError

        from pipelines.sources.amqp import publish_dir as publish
        from pipelines.sources.amqp import safe_uri

        broker_errors, shown = AMQPError, safe_uri(uri)
    elif scheme == "kafka":
        from kafka.errors import KafkaError

        from pipelines.sources.kafka import publish_dir as publish

        broker_errors, shown = KafkaError, uri
    else:
        raise ConfigError(f"--to {uri.split('@')[-1]}: publishing supports amqp:// and kafka://")
    try:
        return publish(uri, input_dir, rate)
    except broker_errors as exc:
        raise BrokerUnavailable(f"--to {shown}: {type(exc).__name__}: {str(exc) or repr(exc)}") from None
