"""Live-mode sources and sinks by URI scheme: ``amqp://`` (RabbitMQ) and ``file://`` (landing folders)."""

from __future__ import annotations

from transforms.errors import ConfigError


def publish_dir(uri: str, input_dir, rate: float | None = None) -> int:
    """``revenue publish``: every line of the event files under ``input_dir`` as one message to ``uri``."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme != "amqp":
        raise ConfigError(f"--to {uri.split('@')[-1]}: publishing supports amqp:// only")
    from pipelines.sources.amqp import publish_dir as publish_amqp

    return publish_amqp(uri, input_dir, rate)
