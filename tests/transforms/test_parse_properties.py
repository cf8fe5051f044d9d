"""Property test: whatever the field values, parsing never raises, conserves lines and builds Arrow tables."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.ingest import LineChunk, parse_chunk
from transforms.parse import FIELDS, REASONS, TS_MAX, TS_MIN
from transforms.redact import PiiPolicy

POLICY = PiiPolicy(redaction_key=b"property-key", email_key=None)
BASE = {
    "customer.created": {},
    "subscription.created": {"subscription_id": "s", "plan_id": "p", "currency": "USD", "unit_amount": 100},
    "subscription.updated": {"subscription_id": "s", "plan_id": "p", "currency": "EUR", "unit_amount": 100},
    "subscription.canceled": {"subscription_id": "s"},
    "invoice.paid": {"invoice_id": "i", "currency": "JPY", "amount": 100},
    "invoice.payment_failed": {"invoice_id": "i", "currency": "KWD", "amount": 100},
    "charge.refunded": {"invoice_id": "i", "currency": "USD", "amount": 100},
    "usage.recorded": {"meter": "m", "quantity": 1},
}
FIELD_NAMES = sorted({name for req, opt in FIELDS.values() for name in req + opt}
                     | {"event_id", "customer_id", "occurred_at", "event_type"})  # fmt: skip


@st.composite
def timestamps(draw) -> str:
    t = draw(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999)))
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    offset = draw(st.sampled_from(["Z", "z", None, None, ""])) if minutes == 0 else None
    if offset is None:
        sign = "-" if minutes < 0 else "+"
        offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    fraction = f".{t.microsecond:06d}" if draw(st.booleans()) else ""
    sep = draw(st.sampled_from("Tt "))
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}{sep}{t.hour:02d}:{t.minute:02d}:{t.second:02d}{fraction}{offset}"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([2**63, 2**63 - 1, -(2**63), 2**62, 10**15, 10**15 + 1, 0, 1, 10**9, 10**9 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet="0123456789 -.@abc", max_size=40),
    timestamps(),
    st.sampled_from(["day", "week", "month", "year", "usd", "XXX", "4111 1111 1111 1111", "a@b.com"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                                max_size=3),
                      max_leaves=8)  # fmt: skip


@st.composite
def lines(draw) -> bytes:
    event_type = draw(st.sampled_from(sorted(FIELDS)) | st.text(max_size=10))
    obj = {"event_id": draw(st.text(min_size=1, max_size=10)), "event_type": event_type,
           "occurred_at": "2024-05-01T00:00:00Z", "customer_id": "c"}  # fmt: skip
    obj.update(BASE.get(event_type, {}))
    obj.update(draw(st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=5)))
    obj.update(draw(st.dictionaries(st.text(max_size=20), values, max_size=3)))  # unknown fields, random keys
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    depth = draw(st.integers(0, 400))
    if depth:
        leaf = json.dumps(draw(scalars))
        open_, close = draw(st.sampled_from([('{"d": ', "}"), ("[", "]")]))
        text = text[:-1] + (", " if len(obj) else "") + '"deep": ' + open_ * depth + leaf + close * depth + "}"
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + raw + draw(st.sampled_from([b"", b"\r"]))
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(lines(), min_size=1, max_size=8))
def test_parse_never_raises_and_conserves_lines(raw_lines):
    tables, parsed = parse_chunk(LineChunk("in/prop.jsonl", 3, 1, tuple(raw_lines)), POLICY)  # builds Arrow tables
    assert parsed.lines == len(raw_lines)
    assert sum(t.num_rows for t in tables.values()) == len(raw_lines)
    for name in ("events", "usage"):
        for ts in tables[name]["occurred_at"].to_pylist():
            assert TS_MIN <= ts < TS_MAX
    assert set(tables["dead_letter"]["reason"].to_pylist()) <= set(REASONS)
