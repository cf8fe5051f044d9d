"""One error hierarchy: the CLI turns these into a one-line message and an exit status."""

from __future__ import annotations


class RevenueError(Exception):
    """A usage, configuration or input error: exit status 1."""

    exit_code = 1


class InputError(RevenueError):
    pass


class ConfigError(RevenueError):
    pass


class QualityGateFailed(RevenueError):
    """A critical data-quality expectation failed: exit status 2."""

    exit_code = 2


class BuildFailed(RevenueError):
    """dbt build or tests failed: the published warehouse was left untouched."""

    exit_code = 1
