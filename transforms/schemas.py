"""Lake table schemas (CONTRACT section 3), defined once as pyarrow schemas.

Partition columns are not stored inside the Parquet files; they are the hive
directory names listed in ``PARTITION_COLUMNS``.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

# The days the lake holds, for event times, FX rates and --as-of: beyond them, day and month
# ranges built downstream (FX days, month spines) would grow without bound.
FIRST_SUPPORTED_DAY = dt.date(1970, 1, 1)
LAST_SUPPORTED_DAY = dt.date(2199, 12, 31)

TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(38, 6)  # major unit of the column's currency
QUANTITY = pa.decimal128(38, 9)  # usage quantities: exact, never float

PAYMENT_EVENT_TYPES = (
    "customer.created",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "invoice.paid",
    "invoice.payment_failed",
    "charge.refunded",
)
USAGE_EVENT_TYPES = ("usage.recorded",)
EVENT_TYPES = PAYMENT_EVENT_TYPES + USAGE_EVENT_TYPES

# Provenance columns shared by events/usage: where the row came from and a digest of
# its canonical payload, used to tell duplicates from conflicts on later runs.
_PROVENANCE = [
    pa.field("payload_sha256", pa.string(), nullable=False),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_line", pa.int64(), nullable=False),
]

EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("occurred_at", TS, nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("subscription_id", pa.string()),
        pa.field("plan_id", pa.string()),
        pa.field("invoice_id", pa.string()),
        pa.field("currency", pa.string()),  # ISO 4217, upper case
        pa.field("currency_exponent", pa.int8()),  # minor-unit exponent of currency
        pa.field("unit_amount", pa.int64()),  # minor units
        pa.field("quantity", pa.int64()),
        pa.field("interval", pa.string()),
        pa.field("interval_count", pa.int64()),
        pa.field("trial_end", TS),
        pa.field("effective_at", TS),
        pa.field("amount", pa.int64()),  # minor units
        pa.field("tax", pa.int64()),  # minor units
        pa.field("period_start", TS),
        pa.field("period_end", TS),
        pa.field("attempt", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("email_hmac", pa.string()),  # HMAC-SHA256 of the lower-cased email, hex
        pa.field("name", pa.string()),
        pa.field("country", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object of unknown fields; cards/emails redacted (transforms.redact)
        *_PROVENANCE,
    ]
)

USAGE = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("occurred_at", TS, nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("meter", pa.string(), nullable=False),
        pa.field("quantity", QUANTITY, nullable=False),
        pa.field("subscription_id", pa.string()),
        pa.field("attributes", pa.string()),
        *_PROVENANCE,
    ]
)

DEAD_LETTER = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),  # 1-based; 0 = the file as a whole
        pa.field("raw", pa.string(), nullable=False),  # cards/emails redacted; truncated past RAW_LIMIT
        pa.field("raw_sha256", pa.string(), nullable=False),  # digest of the original bytes
        pa.field("message", pa.string(), nullable=False),
        pa.field("event_id", pa.string()),
    ]
)

USAGE_BY_METER = pa.list_(pa.struct([("meter", pa.string()), ("quantity", QUANTITY)]))
MRR_BY_CURRENCY = pa.list_(pa.struct([("currency", pa.string()), ("mrr_minor", pa.int64())]))

CUSTOMER_MONTHS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("reporting_currency", pa.string(), nullable=False),
        pa.field("mrr", MONEY, nullable=False),  # at the month's last instant (as-of day's end for the as-of month)
        pa.field("previous_mrr", MONEY, nullable=False),
        pa.field("mrr_change", MONEY, nullable=False),  # signed
        pa.field("movement", pa.string(), nullable=False),
        pa.field("has_paid_before", pa.bool_(), nullable=False),  # some earlier month had mrr > 0
        pa.field("active_subscriptions", pa.int64(), nullable=False),
        pa.field("mrr_by_currency", MRR_BY_CURRENCY, nullable=False),  # original currencies, minor units
        pa.field("revenue_paid", MONEY, nullable=False),  # invoices paid incl. tax, reporting currency
        pa.field("tax", MONEY, nullable=False),
        pa.field("refunds", MONEY, nullable=False),
        pa.field("net_revenue", MONEY, nullable=False),  # revenue_paid - tax - refunds
        pa.field("invoices_paid", pa.int64(), nullable=False),
        pa.field("failed_payments", pa.int64(), nullable=False),
        pa.field("refund_count", pa.int64(), nullable=False),
        pa.field("usage", USAGE_BY_METER, nullable=False),
    ]
)

CUSTOMER_LIFETIME = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("reporting_currency", pa.string(), nullable=False),
        pa.field("first_event_month", pa.date32(), nullable=False),
        pa.field("first_paid_month", pa.date32()),
        pa.field("last_paid_month", pa.date32()),
        pa.field("last_churn_month", pa.date32()),
        pa.field("months_active", pa.int64(), nullable=False),
        pa.field("churn_count", pa.int64(), nullable=False),
        pa.field("current_mrr", MONEY, nullable=False),
        pa.field("lifetime_revenue", MONEY, nullable=False),  # paid - tax - refunds, reporting currency
        # the first instant after the as-of day at which a known subscription state takes effect or a
        # trial ends (MRR may change with no new event); null: none. Incremental runs recompute these.
        pa.field("next_change_at", TS),
        pa.field("as_of", pa.date32(), nullable=False),
    ]
)

# Derived by the metrics stage: one row per day x original currency of paid invoices and refunds,
# each payment converted once (transforms.revenue.convert_payments) at its own day's rate.
REVENUE_DAILY = pa.schema(
    [
        pa.field("date", pa.date32(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("gross_revenue", MONEY, nullable=False),  # original currency, major unit, tax included
        pa.field("tax", MONEY, nullable=False),
        pa.field("refunds", MONEY, nullable=False),
        pa.field("gross_revenue_reporting", MONEY, nullable=False),  # reporting currency, per-payment rounded
        pa.field("tax_reporting", MONEY, nullable=False),
        pa.field("refunds_reporting", MONEY, nullable=False),
        pa.field("invoices_paid", pa.int64(), nullable=False),
        pa.field("refund_count", pa.int64(), nullable=False),
        pa.field("reporting_currency", pa.string(), nullable=False),
        pa.field("month", pa.date32(), nullable=False),
    ]
)


# Closed periods (CONTRACT section 7): the close history, the figures frozen at each close, and the
# restatements found since. Written by `revenue close` / `reopen` and after each warehouse build
# (pipelines.closes), never derived from events: a full refresh keeps them.
RATE = pa.decimal128(38, 10)

PERIOD_CLOSES = pa.schema(
    [
        pa.field("action", pa.string(), nullable=False),  # close | reopen
        pa.field("acted_at", TS, nullable=False),  # wall-clock time of the action (UTC): the only wall-clock value
        pa.field("acted_by", pa.string(), nullable=False),
        pa.field("note", pa.string()),  # the close's note, or the reopen's reason
        pa.field("lake_versions", pa.string(), nullable=False),  # JSON {table: version} at the action
    ]
)

# The mrr_monthly_reported row of a month as finance reported it at a close (keyed by month and the
# close's acted_at), plus the month's cash figures in the reporting currency.
CLOSED_FIGURES = pa.schema(
    [
        pa.field("closed_at", TS, nullable=False),  # = period_closes.acted_at of the close
        pa.field("mrr", MONEY), pa.field("arr", MONEY), pa.field("active_customers", pa.int64()),
        pa.field("new_mrr", MONEY), pa.field("expansion_mrr", MONEY), pa.field("reactivation_mrr", MONEY),
        pa.field("contraction_mrr", MONEY), pa.field("churned_mrr", MONEY), pa.field("net_new_mrr", MONEY),
        pa.field("new_customers", pa.int64()), pa.field("reactivated_customers", pa.int64()),
        pa.field("churned_customers", pa.int64()), pa.field("previous_mrr", MONEY),
        pa.field("previous_active_customers", pa.int64()), pa.field("customer_churn_rate", RATE),
        pa.field("gross_mrr_churn_rate", RATE), pa.field("net_mrr_churn_rate", RATE), pa.field("arpa", MONEY),
        pa.field("quick_ratio", RATE), pa.field("trailing_customer_churn_rate", RATE), pa.field("ltv", MONEY),
        pa.field("ltv_null_reason", pa.string()), pa.field("net_mrr_retention", RATE),
        pa.field("restatement_adjustment_mrr", MONEY),
        pa.field("gross_revenue", MONEY), pa.field("tax", MONEY), pa.field("refunds", MONEY),
        pa.field("net_revenue", MONEY),  # reporting currency, from fct_revenue_daily
    ]
)  # fmt: skip

RESTATEMENTS = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("reported_value", MONEY, nullable=False),  # as frozen at the close
        pa.field("restated_value", MONEY, nullable=False),  # as this run computes it
        pa.field("difference", MONEY, nullable=False),  # restated - reported
        pa.field("events", pa.int64()),  # events that changed it since the close (null: close version vacuumed)
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("detected_at", pa.date32(), nullable=False),  # the run's as-of date (reproducible, not wall-clock)
        pa.field("booked_in_month", pa.date32()),  # the first open month
        pa.field("close_acted_at", TS, nullable=False),  # the close the reported value comes from
        pa.field("events_version", pa.int64()),  # lake events version the run read
        pa.field("material", pa.bool_(), nullable=False),  # above the run's --materiality thresholds
    ]
)

# Which events a restatement row counted: one row per (month, run, event, metric group).
RESTATEMENT_EVENTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("close_acted_at", TS, nullable=False),
        pa.field("affects", pa.string(), nullable=False),  # mrr (subscription events) | net_revenue (payments)
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("occurred_at", TS, nullable=False),
        pa.field("effective_at", TS),
    ]
)

PARTITION_COLUMNS = {
    "events": ("event_date", pa.date32()),
    "usage": ("event_date", pa.date32()),
    "dead_letter": ("reason", pa.string()),
    "customer_months": ("month", pa.date32()),
    "revenue_daily": ("month", pa.date32()),
    "customer_lifetime": ("as_of", pa.date32()),
    "period_closes": ("month", pa.date32()),
    "closed_figures": ("month", pa.date32()),
    "restatements": ("month", pa.date32()),
    "restatement_events": ("month", pa.date32()),
}

# the closed-period tables: written by actions and run checks, never rebuilt from events
PERIOD_TABLES = ("period_closes", "closed_figures", "restatements", "restatement_events")

# the metrics stage's outputs: each run replaces all three, from the same pinned events and usage
DERIVED_TABLES = ("customer_months", "customer_lifetime", "revenue_daily")

# every lake table's schema, by table name (the partition column may live only in the directory names)
LAKE_SCHEMAS = {
    "events": EVENTS, "usage": USAGE, "dead_letter": DEAD_LETTER, "customer_months": CUSTOMER_MONTHS,
    "customer_lifetime": CUSTOMER_LIFETIME, "revenue_daily": REVENUE_DAILY,
    "period_closes": PERIOD_CLOSES, "closed_figures": CLOSED_FIGURES, "restatements": RESTATEMENTS,
    "restatement_events": RESTATEMENT_EVENTS,
}  # fmt: skip


def with_partition_column(table: str) -> pa.Schema:
    """A lake table's schema including its hive partition column, typed."""
    schema = LAKE_SCHEMAS[table]
    name, kind = PARTITION_COLUMNS[table]
    if name in schema.names:
        schema = schema.remove(schema.get_field_index(name))
    return schema.append(pa.field(name, kind))
