"""Beam pipeline options: FnApiRunner unless the user passes another runner."""

from __future__ import annotations

from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions


def passes(args, *flags: str) -> bool:
    """Whether Beam arguments ``args`` set any of ``flags`` (``--flag value`` or ``--flag=value``)."""
    return any(a.split("=", 1)[0] in flags for a in args)


def pipeline_options(extra: list[str] | tuple[str, ...] = ()) -> PipelineOptions:
    args = list(extra)
    if not passes(args, "--runner"):
        # The default DirectRunner tries to download Prism from GitHub first (STACK.md).
        args.append("--runner=FnApiRunner")
    return PipelineOptions(args)


def worker_processes_runner(workers: int, log_file: Path) -> tuple[object, PipelineOptions]:
    """FnApiRunner with ``workers`` SDK worker processes (its ``multi_processing`` mode), whose
    standard error goes to ``log_file``: a worker prints its start-up at INFO there (Beam sets that
    level before it reads any option), which is noise on a user's terminal. What a worker logs while
    it runs reaches this process's logging through Beam's logging channel; a worker that dies makes
    the run fail (and its last words are in ``log_file``)."""
    import shlex
    import sys

    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import environments

    command = (f"{shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main "
               f"2>>{shlex.quote(str(log_file))}")  # fmt: skip
    runner = FnApiRunner(default_environment=environments.SubprocessSDKEnvironment.from_command_string(command))
    # in_memory running mode (the default) keeps the environment above; it only warns that workers
    # other than 1 want another mode, which is not so for a runner given its environment
    return runner, PipelineOptions([f"--direct_num_workers={workers}"])
