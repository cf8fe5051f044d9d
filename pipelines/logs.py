"""The CLI's logging configuration, applied again in every child interpreter a command starts."""

from __future__ import annotations

import logging


def configure_logging(debug: bool) -> None:
    # Beam logs through the root logger at import time, so force our configuration (STACK.md).
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, force=True,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "apitools not found" not in record.getMessage())
    for noisy in ("apache_beam", "great_expectations", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def debugging() -> bool:
    """Whether this process logs at debug level (a child started now should too)."""
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
