"""The `revenue` command. Commands parse options and call library functions; nothing else."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sys
from pathlib import Path

import click

from pipelines.errors import RevenueError

log = logging.getLogger("revenue")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO_ROOT / "data" / "sample" / "events"
DEFAULT_DATA_DIR = Path("data")

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def _configure_logging(debug: bool) -> None:
    # Beam logs through the root logger at import time, so force our configuration (STACK.md).
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, force=True,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "apitools not found" not in record.getMessage())
    for noisy in ("apache_beam", "great_expectations", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def error_boundary(func):
    """Known errors -> one line on stderr and their exit status; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except RevenueError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if debug:
                raise
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}", err=True)
            sys.exit(1)

    return wrapper


BEAM_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="revenue-analytics")
def main(debug: bool) -> None:
    """Revenue analytics: ingest payment and usage events, compute MRR, publish a warehouse."""
    _configure_logging(debug)


def data_dir_option(func):
    return click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR,
                        show_default=True, help="Where the lake, warehouse, reports and manifests live.")(func)  # fmt: skip


@main.command(context_settings=BEAM_ARGS)
@click.option("--input", "input_dir", type=click.Path(path_type=Path), default=DEFAULT_INPUT,
              show_default="bundled sample", help="Folder of *.jsonl / *.jsonl.gz event files (recursive).")
@data_dir_option
@click.option("--shards", type=click.IntRange(1, 1024), default=None, help="Dedup shards (default: by input size).")
@click.pass_context
@error_boundary
def ingest(ctx, input_dir: Path, data_dir: Path, shards: int | None) -> None:
    """Parse, validate and deduplicate events into the Parquet lake. Extra args go to Beam."""
    from pipelines.ingest import run_ingest
    from pipelines.summary import print_ingest

    result = run_ingest(input_dir, data_dir, ctx.args, shards=shards)
    print_ingest(result)


def _parse_date(ctx, param, value):
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


def metrics_options(func):
    func = click.option("--fx-rates", type=click.Path(path_type=Path), default=None,
                        help="CSV date,currency,rate quoted in the reporting currency (default: bundled table).")(func)
    func = click.option("--reporting-currency", default="USD", show_default=True, help="ISO 4217 code.")(func)
    func = click.option("--as-of", callback=_parse_date, default=None,
                        help="Last day that counts, YYYY-MM-DD (default: date of the latest event).")(func)
    return func


@main.command(context_settings=BEAM_ARGS)
@data_dir_option
@metrics_options
@click.pass_context
@error_boundary
def metrics(ctx, data_dir: Path, as_of, reporting_currency: str, fx_rates: Path | None) -> None:
    """Compute customer_months and customer_lifetime (calendar-month windows) from the lake."""
    from pipelines.metrics import run_metrics
    from pipelines.summary import print_metrics

    print_metrics(run_metrics(data_dir, as_of, reporting_currency, fx_rates, ctx.args))


@main.command()
@data_dir_option
@click.option("--fx-rates", type=click.Path(path_type=Path), default=None,
              help="CSV date,currency,rate quoted in the reporting currency (default: bundled table).")
@click.option("--no-gate", is_flag=True, help="Publish without running the data-quality gate.")
@error_boundary
def transform(data_dir: Path, fx_rates: Path | None, no_gate: bool) -> None:
    """dbt build into a fresh warehouse copy; publish it atomically if tests (and the gate) pass."""
    from pipelines.summary import print_transform
    from pipelines.transform import run_transform

    gate = None
    if not no_gate:
        from pipelines.quality import warehouse_gate

        gate = warehouse_gate(data_dir)
    print_transform(run_transform(data_dir, fx_rates, gate=gate))


@main.command()
@data_dir_option
@click.option("--dead-letter-warning", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Dead-letter ratio above which a warning is reported.")
@click.option("--dead-letter-critical", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Dead-letter ratio above which the gate fails.")
@error_boundary
def validate(data_dir: Path, dead_letter_warning: float, dead_letter_critical: float) -> None:
    """Run the Great Expectations suites on the lake and the published warehouse; exit 2 on a critical failure."""
    from pipelines.quality import validate as run_validate
    from pipelines.summary import print_gate
    from pipelines.transform import warehouse_path

    warehouse = warehouse_path(data_dir)
    result = run_validate(data_dir, warehouse=warehouse if warehouse.exists() else None,
                          thresholds={"dead_letter_ratio_warning": dead_letter_warning,
                                      "dead_letter_ratio_critical": dead_letter_critical})
    print_gate(result)
    if not result.passed:
        sys.exit(2)


@main.command(context_settings=BEAM_ARGS)
@click.option("--input", "input_dir", type=click.Path(path_type=Path), default=DEFAULT_INPUT,
              show_default="bundled sample", help="Folder of *.jsonl / *.jsonl.gz event files (recursive).")
@data_dir_option
@metrics_options
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.pass_context
@error_boundary
def run(ctx, input_dir: Path, data_dir: Path, as_of, reporting_currency: str, fx_rates: Path | None,
        quiet: bool) -> None:
    """Ingest, metrics, dbt build, quality gate, publish and report. Exit 0 ok, 1 error, 2 quality gate failed."""
    from pipelines.run import run_all
    from pipelines.summary import print_run

    if fx_rates is not None:
        _check_fx(fx_rates, reporting_currency)
    result = run_all(input_dir, data_dir, as_of, reporting_currency, fx_rates, ctx.args, show_progress=not quiet)
    print_run(result)
    if result.exit_code:
        click.echo(f"error: {result.summary['error']}", err=True)
    sys.exit(result.exit_code)


def _check_fx(fx_rates: Path, reporting_currency: str) -> None:
    """Fail fast (exit 1) on an unreadable FX file, before any stage runs."""
    from pipelines.errors import ConfigError
    from transforms.fx import FxError, load_fx

    try:
        load_fx(reporting_currency, fx_rates)
    except (FxError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


@main.command()
@click.option("--month", required=True, help="Month to report, YYYY-MM.")
@data_dir_option
@error_boundary
def report(month: str, data_dir: Path) -> None:
    """Write the month's finance report (self-contained HTML) and its tables as CSV and XLSX."""
    from pipelines.report import build_report, parse_month

    result = build_report(data_dir, parse_month(month))
    click.echo(f"report: {result['html']}  (tables as CSV/XLSX in {result['dir']})")


@main.command()
@click.option("--customers", type=click.IntRange(1), default=300, show_default=True)
@click.option("--months", type=click.IntRange(1, 600), default=24, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder to write into.")
@click.option("--bad-rate", type=click.FloatRange(0, 0.5), default=0.01, show_default=True,
              help="Fraction of extra bad lines (malformed, invalid, duplicates, conflicts).")
@click.option("--start", default="2024-01", show_default=True, help="First month, YYYY-MM.")
@click.option("--files", "n_files", type=click.IntRange(1, 10_000), default=None, help="Number of event files.")
@error_boundary
def generate(customers, months, seed, output, bad_rate, start, n_files) -> None:
    """Write realistic synthetic events plus their ground truth (counts and expected MRR)."""
    from pipelines.generate import generate as run_generate

    truth = run_generate(output, customers=customers, months=months, seed=seed, bad_rate=bad_rate,
                         start=start, n_files=n_files)  # fmt: skip
    c = truth["counts"]
    click.echo(f"wrote {c['lines']} lines in {truth['files']} files to {output}: {c['accepted']} accepted, "
               f"{c['duplicates']} duplicates, {c['dead_letters']} dead letters expected")  # fmt: skip


if __name__ == "__main__":
    main()
