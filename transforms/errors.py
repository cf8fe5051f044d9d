"""The project's one error hierarchy, rooted in ``RevenueError``.

The library raises these; the CLI's single boundary turns them into a one-line message
and the exit status they carry (CONTRACT section 5): 1 for usage, configuration and input
errors, 2 for a failed data-quality gate. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class RevenueError(Exception):
    """A usage, configuration or input error: exit status 1."""

    exit_code = 1


class InputError(RevenueError):
    """The input (event files, the lake, the warehouse) is missing or unusable."""


class ConfigError(RevenueError):
    """A flag, environment variable or configuration file is invalid."""


class UnknownCurrency(ConfigError, ValueError):
    """Not an ISO 4217 code with a minor unit."""


class FxError(ConfigError, ValueError):
    """A rate file is unreadable or malformed, or a rate is missing."""


class MissingFxRate(FxError):
    def __init__(self, currency: str, day, reporting_currency: str):
        super().__init__(f"no FX rate for {currency} -> {reporting_currency} on or before {day.isoformat()}")
        self.currency = currency
        self.day = day


class BrokerUnavailable(RevenueError):
    """A message broker could not be reached or refused a publish (``revenue publish``; the
    stream retries instead)."""


class LakeError(RevenueError):
    """The lake is busy (another run holds its lock) or damaged."""


class BuildFailed(RevenueError):
    """dbt build or its tests failed: the published warehouse was left untouched."""


class QualityGateFailed(RevenueError):
    """A critical data-quality expectation failed: exit status 2."""

    exit_code = 2
