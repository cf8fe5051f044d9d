"""Human-readable summaries printed at the end of commands (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def print_ingest(result) -> None:
    table = Table(title=f"ingest {result.run_id}", show_header=True)
    table.add_column("count")
    table.add_column("value", justify="right")
    table.add_row("lines read", f"{result.lines_read:,}")
    table.add_row("rows written", f"{result.rows_written:,} ({result.events_written:,} events, "
                  f"{result.usage_written:,} usage)")
    table.add_row("duplicates", f"{result.duplicates:,}")
    table.add_row("dead letters", f"{result.dead_letters:,}")
    for reason, n in sorted(result.dead_letters_by_reason.items()):
        table.add_row(f"  {reason}", f"{n:,}")
    console.print(table)
    console.print(f"read {result.lines_read} = written {result.rows_written} + duplicates "
                  f"{result.duplicates} + dead letters {result.dead_letters}  ({result.seconds:.1f}s)")


def print_metrics(result) -> None:
    console.print(
        f"customer_months: {result.customer_months:,} rows, {result.customers:,} customers, {result.months} months; "
        f"as of {result.as_of}: MRR {result.mrr_at_as_of} {result.reporting_currency} from "
        f"{result.active_customers_at_as_of:,} paying customers  ({result.seconds:.1f}s)"
    )


def print_transform(result) -> None:
    console.print(f"warehouse published: {result.published}  (as of {result.as_of}, {result.reporting_currency}; "
                  f"dbt build {result.dbt_seconds:.1f}s; {result.nodes})")
