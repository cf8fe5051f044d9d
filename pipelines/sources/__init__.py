"""Live-mode sources and sinks by URI scheme: ``amqp://`` (RabbitMQ), ``kafka://`` and ``file://`` (landing folders)."""

from __future__ import annotations

from transforms.errors import ConfigError


def publish_dir(uri: str, input_dir, rate: float | None = None) -> int:
    """``revenue publish``: every line of the event files under ``input_dir`` as one message to ``uri``."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "amqp":
        from pipelines.sources.amqp import publish_dir as publish_amqp

        return publish_amqp(uri, input_dir, rate)
    if scheme == "kafka":
        from pipelines.sources.kafka import publish_dir as publish_kafka

        return publish_kafka(uri, input_dir, rate)
    raise ConfigError(f"--to {uri.split('@')[-1]}: publishing supports amqp:// and kafka://")
