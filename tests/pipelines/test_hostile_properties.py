"""Property: whatever values the fields hold, ingest then metrics never raise, every line is accounted
for, and a second ingest of the same input adds nothing (the real Beam pipelines, in process)."""

import datetime as dt
import json
import os

import pytest
from conftest import cfg, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.ingest import run_ingest
from pipelines.metrics import run_metrics
from transforms.errors import ConfigError, InputError

pytestmark = pytest.mark.slow

INTS = st.one_of(st.integers(-(2**64), 2**64), st.sampled_from([0, 1, 2**31, 2**62, 2**63 - 1, 2**63, 10**15, 10**15 + 1]))
OFFSETS = st.sampled_from(["Z", "+14:00", "-12:00", "+05:45", "-00:30", "+23:59", ""])
TIMES = st.builds(lambda d, t, off: f"{d.isoformat()}T{t.isoformat(timespec='seconds')}{off}",
                  st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)), st.times(), OFFSETS)  # fmt: skip
NEAR = st.builds(lambda d, off: f"{d.isoformat()}T00:00:00{off}",
                 st.dates(dt.date(2023, 1, 1), dt.date(2025, 12, 31)), OFFSETS)  # mostly accepted times
TEXT = st.text(max_size=30)
VALUE = st.recursive(st.one_of(st.none(), st.booleans(), INTS, TEXT, st.floats(allow_nan=False)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
                     max_leaves=12)  # fmt: skip
TYPES = st.sampled_from(["customer.created", "subscription.created", "subscription.updated", "subscription.canceled",
                         "invoice.paid", "invoice.payment_failed", "charge.refunded", "usage.recorded"])
CURRENCIES = st.sampled_from(["USD", "eur", "JPY", "KWD", "XAU", "GBP"])


@st.composite
def event(draw) -> str:
    row = {
        "event_id": draw(st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["e1", "e2", "e3"]))),
        "event_type": draw(TYPES),
        "occurred_at": draw(st.one_of(NEAR, TIMES)),
        "customer_id": draw(st.sampled_from(["c1", "c2", "cus_ü", "c@x.io"])),
        "subscription_id": draw(st.sampled_from(["s1", "s2"])),
        "plan_id": "p", "invoice_id": "i1", "currency": draw(CURRENCIES), "meter": draw(st.sampled_from(["m", "<b>m</b>"])),
    }  # fmt: skip
    for name in ("unit_amount", "amount", "tax", "quantity", "interval_count", "attempt"):
        if draw(st.booleans()):
            row[name] = draw(INTS)
    for name in ("effective_at", "trial_end"):
        if draw(st.booleans()):
            row[name] = draw(st.one_of(NEAR, TIMES))
    if draw(st.booleans()):
        row["interval"] = draw(st.sampled_from(["day", "week", "month", "year", "fortnight"]))
    if draw(st.booleans()):
        row[draw(TEXT)] = draw(VALUE)
    if draw(st.booleans()):
        depth = draw(st.integers(0, 400))
        return json.dumps(row)[:-1] + ', "deep": ' + "[" * depth + "1" + "]" * depth + "}"
    return json.dumps(row)


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 8)), deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(event(), min_size=1, max_size=25))
def test_ingest_and_metrics_never_raise_and_conserve_lines(tmp_path_factory, lines):
    base = tmp_path_factory.mktemp("prop")
    write_lines(base / "in" / "a.jsonl", lines)
    config = cfg(base / "d", input_dir=base / "in")
    first = run_ingest(config, checksums=False)
    assert first.lines_read == len(lines)
    assert first.lines_read == first.rows_written + first.duplicates + first.dead_letters
    again = run_ingest(config, checksums=False)
    assert again.rows_written == 0 and again.lines_read == again.duplicates + again.dead_letters
    if first.rows_written:
        try:
            result = run_metrics(cfg(base / "d"))
        except ConfigError as exc:  # the contract's one allowed failure: a money amount with no FX rate
            assert "no FX rate for" in str(exc)
        else:
            assert result.customer_months >= 0
    else:
        with pytest.raises(InputError):  # nothing accepted: a clear input error, not a crash
            run_metrics(cfg(base / "d"))
