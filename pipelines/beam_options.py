"""Beam pipeline options: FnApiRunner unless the user passes another runner."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


def pipeline_options(extra: list[str] | tuple[str, ...] = ()) -> PipelineOptions:
    args = list(extra)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        # The default DirectRunner tries to download Prism from GitHub first (STACK.md).
        args.append("--runner=FnApiRunner")
    return PipelineOptions(args)
