"""Human-readable summaries printed at the end of commands (rich tables)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transforms.money import format_money

console = Console(highlight=False, width=max(100, Console().width))


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
        f"as of {result.as_of}: MRR {format_money(result.mrr_at_as_of, result.reporting_currency)} from "
        f"{result.active_customers_at_as_of:,} paying customers  ({result.seconds:.1f}s)"
    )
    recomputed = f"; {result.customers_recomputed:,} customers recomputed" if result.mode == "incremental" else ""
    console.print(f"[dim]{result.mode} run: {result.reason}{recomputed}[/dim]")


def print_transform(result) -> None:
    console.print(f"warehouse published: {result.published}  (as of {result.as_of}, {result.reporting_currency}; "
                  f"dbt build {result.dbt_seconds:.1f}s; {result.nodes})")
    for line in restatement_lines(result.restatements):
        console.print(line, soft_wrap=True)


def restatement_lines(restatements: dict | None) -> list[str]:
    """One line per restated metric of a closed month, material ones marked (greppable in CI logs)."""
    rows = (restatements or {}).get("restated", [])
    if not rows:
        return []
    lines = [f"restatements of closed months: {len(rows)} rows ({len(restatements['material'])} material), booked in "
             f"{restatements['booked_in_month']}"]
    currency = restatements.get("reporting_currency")

    def show(value: str, metric: str) -> str:
        if metric == "active_customers" or not currency:  # a count, stored as a decimal
            return f"{Decimal(value).normalize():,f}"
        return format_money(value, currency)

    for r in rows:
        m = r["metric"]
        lines.append(f"{'MATERIAL ' if r['material'] else ''}restatement: {r['month']} {m} reported "
                     f"{show(r['reported'], m)}, restated {show(r['restated'], m)}, difference "
                     f"{show(r['difference'], m)} ({r['events'] if r['events'] is not None else 'n/a'} events "
                     "since the close)")
    return [escape(line) for line in lines]


def print_gate(result) -> None:
    table = Table(title="data-quality gate: " + ("PASSED" if result.passed else "FAILED"), show_header=True)
    table.add_column("suite")
    table.add_column("rows", justify="right")
    table.add_column("status")
    table.add_column("failing expectations (sample of bad values)")
    for o in result.suites:
        status = "passed" if o.passed and not o.warnings else ("warning" if o.passed else "FAILED")
        notes = [f"[critical] {f['expectation']}({f['column'] or ''}) x{f['unexpected_count'] or f['observed_value']}"
                 f" {f['sample'][:3]}" for f in o.critical_failures]
        notes += [f"[warning] {f['expectation']}({f['column'] or ''}) x{f['unexpected_count'] or f['observed_value']}"
                  f" {f['sample'][:3]}" for f in o.warnings]
        table.add_row(o.suite, f"{o.rows:,}", status, escape("\n".join(notes)))
    console.print(table)
    for o in result.suites:  # one plain line per failure: greppable in CI logs, never truncated
        for f in o.critical_failures + o.warnings:
            count = f["unexpected_count"] if f["unexpected_count"] is not None else f["observed_value"]
            console.print(escape(f"{f['severity'].upper()}: {o.suite}: {f['expectation']}({f['column'] or ''}) "
                                 f"unexpected={count} sample={f['sample'][:5]}"), soft_wrap=True)
    console.print(f"quality results: {result.results_file}  docs: {result.docs_index}  ({result.seconds:.1f}s)")


def print_run(result) -> None:
    s = result.summary
    table = Table(title=f"revenue run {result.run_id}: {result.status.upper()}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    ingest = s.get("ingest")
    if ingest:
        table.add_row("events read", f"{ingest['lines_read']:,}")
        table.add_row("written", f"{ingest['rows_written']:,} ({ingest['events_written']:,} payment, "
                      f"{ingest['usage_written']:,} usage)")
        table.add_row("duplicates", f"{ingest['duplicates']:,}")
        reasons = ", ".join(f"{k} {v:,}" for k, v in ingest["dead_letters_by_reason"].items()) or "none"
        table.add_row("dead letters", f"{ingest['dead_letters']:,} ({reasons})")
    if "as_of" in s:
        table.add_row("as of", s["as_of"])
        table.add_row("months covered", str(s["months_covered"]))
        table.add_row("MRR at as-of", f"{format_money(s['mrr_at_as_of'], s['reporting_currency'])} from "
                      f"{s['paying_customers_at_as_of']:,} paying customers ({s['customers']:,} customers seen)")
    if "quality" in s:
        table.add_row("quality gate", "passed" if s["quality"]["passed"] else "FAILED")
    restated = s.get("restatements") or {}
    if restated.get("closed_months"):
        table.add_row("closed months", f"{len(restated['closed_months'])} (through {restated['closed_months'][-1]}); "
                      f"{restated['rows']} restatement rows this run, {len(restated['material'])} material")
    for name, path in s.get("outputs", {}).items():
        table.add_row(name, path)
    table.add_row("timings", ", ".join(f"{k} {v:.1f}s" for k, v in s.get("timings", {}).items()))
    table.add_row("manifest", str(Path(result.manifest).absolute()))
    if s.get("error"):
        table.add_row("error", escape(s["error"]))
    console.print(table)
    for line in restatement_lines(restated):
        console.print(line, soft_wrap=True)
