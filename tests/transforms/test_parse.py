import datetime as dt
import json

import pytest

from transforms.parse import Reject, parse_lines, parse_timestamp
from transforms.redact import CARD_MASK, email_hmac, luhn_valid, redact_text, redact_value

CARD = "4111 1111 1111 1111"


def line(**fields) -> bytes:
    base = {"event_id": "e1", "event_type": "invoice.paid", "occurred_at": "2024-03-01T10:00:00Z",
            "customer_id": "c1", "invoice_id": "in1", "currency": "usd", "amount": 1200, "tax": 200}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def reasons(lines):
    out = parse_lines(lines, "f.jsonl", 0, 1, None)
    return out, out.dead["reason"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_line"),
        (b"{not json", "malformed_json"),
        (b"\xff\xfe{}", "invalid_encoding"),
        (b"[1, 2]", "not_an_object"),
        (line(customer_id=...), "missing_field"),
        (line(customer_id=17), "invalid_field"),
        (line(event_type="invoice.voided"), "unknown_event_type"),
        (line(occurred_at="2024-03-01T10:00:00"), "naive_timestamp"),
        (line(occurred_at="yesterday at noon"), "invalid_timestamp"),
        (line(amount=-5), "negative_amount"),
        (line(tax=-1), "negative_amount"),
        (line(amount=12.5), "invalid_field"),
        (line(amount="1200"), "invalid_field"),
        (line(currency="XYZ"), "unknown_currency"),
        (line(tax=5000), "invalid_field"),
        (line(event_id="x" * 256), "invalid_field"),
    ],
)
def test_bad_lines_are_dead_lettered_with_a_reason(raw, reason):
    out, got = reasons([raw])
    assert got == [reason]
    assert out.events["event_id"] == [] and out.usage["event_id"] == []
    assert out.dead["message"][0]


def test_good_payment_event_is_normalised():
    out, dead = reasons([line(occurred_at="2024-03-01T12:00:00+02:00", extra_field={"a": 1})])
    assert dead == []
    assert out.events["currency"] == ["USD"]
    assert out.events["currency_exponent"] == [2]
    assert out.events["amount"] == [1200] and out.events["tax"] == [200]
    # stored in UTC
    micros = out.events["occurred_at"][0]
    assert dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros) == dt.datetime(
        2024, 3, 1, 10, tzinfo=dt.UTC)
    assert json.loads(out.events["attributes"][0]) == {"extra_field": {"a": 1}}


def test_subscription_defaults_follow_the_contract():
    raw = json.dumps({"event_id": "s1", "event_type": "subscription.created", "occurred_at": "2024-01-05T00:00:00Z",
                      "customer_id": "c1", "subscription_id": "sub1", "plan_id": "p", "currency": "JPY",
                      "unit_amount": 5000}).encode()
    out, dead = reasons([raw])
    assert dead == []
    ev = out.events
    assert (ev["quantity"], ev["interval"], ev["interval_count"]) == ([1], ["month"], [1])
    assert ev["effective_at"] == ev["occurred_at"]
    assert ev["currency_exponent"] == [0]


def test_usage_quantity_is_exact_decimal():
    raw = json.dumps({"event_id": "u1", "event_type": "usage.recorded", "occurred_at": "2024-01-05T00:00:00Z",
                      "customer_id": "c1", "meter": "storage_gb", "quantity": 0.1}).encode()
    out, dead = reasons([raw])
    assert dead == []
    assert str(out.usage["quantity"][0]) == "0.1"


def test_card_numbers_are_redacted_everywhere():
    good = line(note=f"card {CARD}", name="x")
    bad = b'{"event_id": "e2", "note": "4111-1111-1111-1111", '
    out, dead = reasons([good, bad])
    assert CARD not in out.events["attributes"][0] and CARD_MASK in out.events["attributes"][0]
    assert "4111-1111-1111-1111" not in out.dead["raw"][0]


def test_redaction_rules():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    # no window of 13..19 of its digits is Luhn-valid: kept (4111111111111112 holds one, 1111111111112)
    assert redact_text("order 4111111111111113 ok") == "order 4111111111111113 ok"
    assert redact_text("a 5500-0000-0000-0004 b") == f"a {CARD_MASK} b"
    assert redact_text("ref 12 4111 1111 1111 1111") .endswith(CARD_MASK)
    assert redact_value({"x": [4111111111111111, "2024-03-01T10:00:00Z"]}) == {"x": [CARD_MASK, "2024-03-01T10:00:00Z"]}


def test_email_is_only_stored_as_keyed_hash():
    raw = json.dumps({"event_id": "c", "event_type": "customer.created", "occurred_at": "2024-01-05T00:00:00Z",
                      "customer_id": "c1", "email": "A@Example.com"}).encode()
    keyed = parse_lines([raw], "f", 0, 1, b"secret")
    assert keyed.events["email_hmac"] == [email_hmac("a@example.com", b"secret")]
    assert keyed.events["attributes"] == [None]
    unkeyed = parse_lines([raw], "f", 0, 1, None)
    assert unkeyed.events["email_hmac"] == [None] and unkeyed.emails_dropped == 1
    bad = parse_lines([raw[:-3]], "f", 0, 1, None)
    assert bad.dead["reason"] == ["malformed_json"] and "Example.com" not in bad.dead["raw"][0]


def test_timestamp_parser():
    assert parse_timestamp("2024-02-29T23:59:59.5-01:00", "t") == dt.datetime(2024, 3, 1, 0, 59, 59, 500000,
                                                                             tzinfo=dt.UTC)
    with pytest.raises(Reject):
        parse_timestamp("2024-02-30T00:00:00Z", "t")
