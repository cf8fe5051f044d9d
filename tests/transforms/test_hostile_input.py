"""Hostile input: every line ends as an accepted row or a dead letter with a reason, never an exception.

The corpus below is the committed list of cases a tester found (or that we thought of), each
with its expected outcome: ``"event"``, ``"usage"`` or a dead-letter reason code.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pyarrow.parquet as pq
import pytest

from transforms.ingest import LineChunk, chunk_to_tables, parse_chunk
from transforms.parse import MAX_DEPTH, MAX_ID, MAX_LINE_BYTES, REASONS, parse_lines
from transforms.redact import PiiPolicy

POLICY = PiiPolicy(redaction_key=b"test-redaction-key", email_key=b"test-email-key")
CARD = "4111111111111111"

INVOICE = {"event_id": "e1", "event_type": "invoice.paid", "occurred_at": "2024-03-01T10:00:00Z",
           "customer_id": "c1", "invoice_id": "in1", "currency": "usd", "amount": 1200, "tax": 200}  # fmt: skip
SUB = {"event_id": "s1", "event_type": "subscription.created", "occurred_at": "2024-03-01T10:00:00Z",
       "customer_id": "c1", "subscription_id": "sub1", "plan_id": "p1", "currency": "USD", "unit_amount": 1000}  # fmt: skip
FAILED = {"event_id": "f1", "event_type": "invoice.payment_failed", "occurred_at": "2024-03-01T10:00:00Z",
          "customer_id": "c1", "invoice_id": "in1", "currency": "USD", "amount": 1000}  # fmt: skip
CUSTOMER = {"event_id": "cu1", "event_type": "customer.created", "occurred_at": "2024-03-01T10:00:00Z",
            "customer_id": "c1"}  # fmt: skip
USAGE = {"event_id": "u1", "event_type": "usage.recorded", "occurred_at": "2024-03-01T10:00:00Z",
         "customer_id": "c1", "meter": "api_calls", "quantity": 1}  # fmt: skip


def ev(base: dict, **fields) -> bytes:
    row = dict(base)
    row.update(fields)
    return json.dumps({k: v for k, v in row.items() if v is not ...}).encode()


def with_raw(base: dict, name: str, fragment: str) -> bytes:
    """``base`` with one more field whose value is the raw JSON ``fragment`` (json.dumps can't nest 10000 deep)."""
    return json.dumps(base)[:-1].encode() + f', "{name}": {fragment}}}'.encode()


def nested(depth: int, leaf: str = "1") -> str:
    return '{"k": ' * depth + leaf + "}" * depth


def arrays(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


TWO63 = 2**63
CORPUS = [
    # --- nesting (the line's own object is level 1)
    ("nested_254_unknown_field", with_raw(INVOICE, "x", nested(254)), "too_deeply_nested"),
    ("nested_600_card_run", with_raw(INVOICE, "x", nested(600, f'"{CARD}"')), "too_deeply_nested"),
    ("arrays_10000", with_raw(INVOICE, "x", arrays(10000)), "too_deeply_nested"),
    ("arrays_10000_card_number", with_raw(INVOICE, "x", arrays(10000, CARD)), "too_deeply_nested"),
    ("whole_line_arrays_300", arrays(300).encode(), "too_deeply_nested"),
    ("nested_at_limit", with_raw(INVOICE, "x", nested(MAX_DEPTH - 1)), "event"),
    ("nested_at_limit_with_card", with_raw(INVOICE, "x", nested(MAX_DEPTH - 1, f'"{CARD}"')), "event"),
    ("nested_past_limit", with_raw(INVOICE, "x", nested(MAX_DEPTH)), "too_deeply_nested"),
    ("brackets_inside_strings", ev(INVOICE, note="[{" * 500), "event"),
    ("escaped_quote_then_brackets", ev(INVOICE, note='\\"' + "[" * 300), "event"),
    ("unterminated_string_of_brackets", b'{"a": "' + b"[" * 300, "malformed_json"),
    ("many_escaped_quotes_then_brackets", b'{"a": 1, ' + b'\\"' * 400_000 + b"[" * 100, "malformed_json"),
    ("many_at_signs", ev(INVOICE, note="a@" * 50_000), "event"),
    ("long_digit_run", ev(INVOICE, note="9" * 500_000), "event"),
    # --- timestamps (accepted: 1970-01-01T00:00:00Z <= t < 2200-01-01T00:00:00Z)
    ("ts_9999_minus_1h", ev(INVOICE, occurred_at="9999-12-31T23:59:59-01:00"), "invalid_timestamp"),
    ("ts_0001_plus_1h", ev(INVOICE, occurred_at="0001-01-01T00:30:00+01:00"), "invalid_timestamp"),
    ("ts_9999_z", ev(INVOICE, occurred_at="9999-12-31T23:59:59Z"), "invalid_timestamp"),
    ("ts_2200_exclusive", ev(INVOICE, occurred_at="2200-01-01T00:00:00Z"), "invalid_timestamp"),
    ("ts_2199_last_us", ev(INVOICE, occurred_at="2199-12-31T23:59:59.999999Z"), "event"),
    ("ts_2199_offset_past_2200", ev(INVOICE, occurred_at="2199-12-31T23:30:00-01:00"), "invalid_timestamp"),
    ("ts_epoch", ev(INVOICE, occurred_at="1970-01-01T00:00:00Z"), "event"),
    ("ts_before_epoch_by_offset", ev(INVOICE, occurred_at="1970-01-01T00:30:00+01:00"), "invalid_timestamp"),
    ("ts_1969", ev(INVOICE, occurred_at="1969-12-31T23:59:59Z"), "invalid_timestamp"),
    ("ts_plus_14_month_boundary", ev(INVOICE, occurred_at="2024-03-01T00:30:00+14:00"), "event"),
    ("ts_minus_12_month_boundary", ev(INVOICE, occurred_at="2024-02-29T23:30:00-12:00"), "event"),
    ("ts_lowercase_t_z", ev(INVOICE, occurred_at="2024-03-01t10:00:00z"), "event"),
    ("ts_offset_24h", ev(INVOICE, occurred_at="2024-03-01T10:00:00+24:00"), "invalid_timestamp"),
    ("ts_offset_seconds", ev(INVOICE, occurred_at="2024-03-01T10:00:00+05:30:15"), "invalid_timestamp"),
    ("ts_basic_format", ev(INVOICE, occurred_at="20240301T100000Z"), "invalid_timestamp"),
    ("ts_leap_second", ev(INVOICE, occurred_at="2016-12-31T23:59:60Z"), "invalid_timestamp"),
    ("ts_fullwidth_digits", ev(INVOICE, occurred_at="２０２４-03-01T10:00:00Z"), "invalid_timestamp"),
    ("ts_naive", ev(INVOICE, occurred_at="2024-03-01T10:00:00"), "naive_timestamp"),
    ("ts_number", ev(INVOICE, occurred_at=1709287200), "invalid_field"),
    ("effective_at_9999", ev(SUB, effective_at="9999-12-31T23:59:59-01:00"), "invalid_timestamp"),
    ("trial_end_0001", ev(SUB, trial_end="0001-01-01T00:30:00+01:00"), "invalid_timestamp"),
    ("period_start_9999", ev(INVOICE, period_start="9999-12-31T00:00:00Z"), "invalid_timestamp"),
    ("period_end_0001", ev(INVOICE, period_end="0001-01-01T00:00:00Z"), "invalid_timestamp"),
    ("cancel_effective_2300", ev({**SUB, "event_type": "subscription.canceled"}, effective_at="2300-01-01T00:00:00Z"),
     "invalid_timestamp"),
    # --- integers (2^63 does not fit int64; 2^64 and beyond arrive as floats from orjson). Numbers
    # of 13+ digits holding a Luhn-valid window are treated as card numbers: a string, invalid_field.
    ("quantity_2p63", ev(SUB, quantity=TWO63), "invalid_field"),
    ("interval_count_2p63", ev(SUB, interval_count=TWO63), "invalid_field"),
    ("attempt_2p63", ev(FAILED, attempt=TWO63), "invalid_field"),
    ("unit_amount_2p63", ev(SUB, unit_amount=TWO63), "invalid_field"),
    ("amount_2p63", ev(INVOICE, amount=TWO63), "invalid_field"),
    ("tax_2p63", ev(INVOICE, tax=TWO63), "invalid_field"),
    ("amount_minus_2p63", ev(INVOICE, amount=-TWO63), "invalid_field"),
    ("amount_2p64", ev(INVOICE, amount=2**64), "invalid_field"),
    ("quantity_2p64_minus", ev(SUB, quantity=-(2**64)), "invalid_field"),
    ("attempt_10p12", ev(FAILED, attempt=10**12), "out_of_range"),
    ("interval_count_10p10", ev(SUB, interval_count=10**10), "out_of_range"),
    ("amount_above_max", ev(INVOICE, amount=10**15 + 1, tax=0), "out_of_range"),
    ("amount_at_max", ev(INVOICE, amount=10**15, tax=0), "event"),
    ("amount_card_as_number", ev(INVOICE, amount=378282246310005, tax=0), "invalid_field"),
    ("amount_minus_zero", b'{"event_id":"e1","event_type":"invoice.paid","occurred_at":"2024-03-01T10:00:00Z",'
                          b'"customer_id":"c1","invoice_id":"i","currency":"USD","amount":-0}', "event"),
    ("amount_1e400", b'{"event_id":"e1","event_type":"invoice.paid","occurred_at":"2024-03-01T10:00:00Z",'
                     b'"customer_id":"c1","invoice_id":"i","currency":"USD","amount":1e400}', "malformed_json"),
    ("extra_1e400", with_raw(INVOICE, "x", "1e400"), "malformed_json"),
    ("extra_minus_1e400", with_raw(INVOICE, "x", "-1e400"), "malformed_json"),
    ("extra_huge_int", with_raw(INVOICE, "x", "9" * 400), "malformed_json"),
    ("amount_float", ev(INVOICE, amount=1e15), "invalid_field"),
    ("amount_bool", ev(INVOICE, amount=True), "invalid_field"),
    # --- MRR bound: unit_amount x quantity x monthly factor <= 10^15 minor units
    ("mrr_max_unit_x_10000", ev(SUB, unit_amount=10**15, quantity=10000), "out_of_range"),
    ("mrr_quantity_2p62", ev(SUB, unit_amount=1000, quantity=2**62), "invalid_field"),
    ("mrr_quantity_above_max_count", ev(SUB, unit_amount=1000, quantity=10**9 + 1), "out_of_range"),
    ("mrr_quantity_max_count", ev(SUB, unit_amount=1000, quantity=10**9), "event"),
    ("mrr_at_bound", ev(SUB, unit_amount=10**14, quantity=10), "event"),
    ("mrr_max_unit_monthly", ev(SUB, unit_amount=10**15), "event"),
    ("mrr_max_unit_daily", ev(SUB, unit_amount=10**15, interval="day"), "out_of_range"),
    ("mrr_max_unit_yearly", ev(SUB, unit_amount=10**15, interval="year"), "event"),
    ("mrr_daily_just_below", ev(SUB, unit_amount=12 * 10**13, quantity=1, interval="day", interval_count=4),
     "event"),
    ("mrr_free_plan_many_seats", ev(SUB, unit_amount=0, quantity=10**9), "event"),
    ("interval_as_list", ev(SUB, interval=["month"]), "invalid_field"),
    # --- usage quantity: 0 .. 10^15, at most 9 decimals
    ("usage_at_max", ev(USAGE, quantity=10**15), "usage"),
    ("usage_above_max", ev(USAGE, quantity=10**15 + 1), "out_of_range"),
    ("usage_float_huge", ev(USAGE, quantity=1e300), "out_of_range"),
    ("usage_9_decimals", ev(USAGE, quantity=0.123456789), "usage"),
    ("usage_10_decimals", ev(USAGE, quantity=0.1234567891), "invalid_field"),
    ("usage_tiny", ev(USAGE, quantity=5e-324), "invalid_field"),
    ("usage_minus_zero", ev(USAGE, quantity=-0.0), "usage"),
    ("usage_negative", ev(USAGE, quantity=-1), "invalid_field"),
    ("usage_27_digits", ev(USAGE, quantity=10**27 - 1), "out_of_range"),
    # --- bytes and encodings
    ("bom_at_line_start", b"\xef\xbb\xbf" + ev(INVOICE), "event"),
    ("bom_and_crlf", b"\xef\xbb\xbf" + ev(INVOICE) + b"\r", "event"),
    ("crlf", ev(INVOICE) + b"\r", "event"),
    ("bom_only", b"\xef\xbb\xbf", "empty_line"),
    ("nul_byte_in_string", ev(INVOICE)[:-1] + b', "x": "a\x00b"}', "malformed_json"),
    ("nul_byte_outside", ev(INVOICE) + b"\x00", "malformed_json"),
    ("nul_escape_in_event_id", ev(INVOICE, event_id="e\x00"), "invalid_field"),
    ("newline_escape_in_customer_id", ev(INVOICE, customer_id="c\n1"), "invalid_field"),
    ("nul_escape_in_name", ev(CUSTOMER, name="a\x00b"), "invalid_field"),
    ("nul_escape_in_attribute", ev(INVOICE, note="a\x00b"), "event"),
    ("lone_high_surrogate", ev(INVOICE)[:-1] + b', "x": "\\ud800"}', "malformed_json"),
    ("lone_low_surrogate_in_id", ev(INVOICE, event_id=...)[:-1] + b', "event_id": "\\udc00"}', "malformed_json"),
    ("surrogate_pair_ok", ev(INVOICE)[:-1] + b', "x": "\\ud83d\\ude00"}', "event"),
    ("invalid_utf8", b'{"event_id": "\xff\xfe"}', "invalid_encoding"),
    ("latin1_card", b'{"event_id": "\xe9 4111 1111 1111 1111"', "invalid_encoding"),
    ("line_too_long", ev(INVOICE, note="x" * MAX_LINE_BYTES), "line_too_long"),
    ("blank", b"   \t ", "empty_line"),
    # --- JSON shapes
    ("duplicate_keys_last_wins", ev(INVOICE)[:-1] + b', "amount": -1}', "negative_amount"),
    ("duplicate_keys_event_type", ev(INVOICE)[:-1] + b', "event_type": "usage.recorded"}', "missing_field"),
    ("null_line", b"null", "not_an_object"),
    ("string_line", b'"4111 1111 1111 1111"', "not_an_object"),
    ("empty_object", b"{}", "missing_field"),
    ("event_type_list", ev(INVOICE, event_type=["invoice.paid"]), "unknown_event_type"),
    ("event_type_object", ev(INVOICE, event_type={"a": [1]}), "unknown_event_type"),
    ("huge_number_of_keys", ev(INVOICE, **{f"k{i}": i for i in range(60_000)}), "event"),
    ("huge_number_of_nested_keys", ev(INVOICE, x={f"k{i}": [i] for i in range(40_000)}), "event"),
    ("many_card_keys", ev(INVOICE, **{f"4111 1111 1111 {i:04d}": i for i in range(2000)}), "event"),
    # --- identifiers: 1..255 characters as sent
    ("event_id_255", ev(INVOICE, event_id="x" * MAX_ID), "event"),
    ("event_id_256", ev(INVOICE, event_id="x" * (MAX_ID + 1)), "invalid_field"),
    ("event_id_255_with_card", ev(INVOICE, event_id="x" * (MAX_ID - 16) + CARD), "event"),
    ("event_id_256_with_card", ev(INVOICE, event_id="x" * (MAX_ID - 15) + CARD), "invalid_field"),
    ("event_id_255_of_emails", ev(INVOICE, event_id=("a@b.c," * 43)[:MAX_ID]), "event"),
    ("customer_id_empty", ev(INVOICE, customer_id=""), "invalid_field"),
    ("meter_256", ev(USAGE, meter="m" * 256), "invalid_field"),
    ("plan_id_number", ev(SUB, plan_id=12), "invalid_field"),
    ("name_1000_of_emails", ev(CUSTOMER, name=("a@b.c " * 200)[:1000]), "event"),
    # --- PII in places that used to leak (accepted, redacted)
    ("email_in_customer_id", ev(INVOICE, customer_id="bob@example.com"), "event"),
    ("card_in_event_id", ev(INVOICE, event_id=f"evt_{CARD}"), "event"),
    ("card_key_top_level", ev(INVOICE, **{"4111.1111.1111.1111": 1}), "event"),
    ("card_key_nested", ev(INVOICE, x={"a": {"4111  1111  1111  1111": 1}}), "event"),
    ("email_in_unknown_event_type", ev(INVOICE, event_type="bob@example.com"), "unknown_event_type"),
    ("email_in_bad_timestamp", ev(INVOICE, occurred_at="bob@example.com"), "invalid_timestamp"),
    ("escaped_card_digits", ev(INVOICE)[:-1] + b', "x": "\\u0034111111111111111"}', "event"),
]


def _outcome(out) -> str:
    if out.events["event_id"]:
        return "event"
    if out.usage["event_id"]:
        return "usage"
    return out.dead["reason"][0]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_line_has_its_expected_outcome(raw, expected):
    out = parse_lines([raw], "hostile.jsonl", 0, 1, POLICY)
    assert len(out.events["event_id"]) + len(out.usage["event_id"]) + len(out.dead["reason"]) == out.lines == 1
    assert _outcome(out) == expected, out.dead["message"]
    assert expected in ("event", "usage") or expected in REASONS
    chunk_to_tables(out)  # every value fits its Arrow column


def test_whole_corpus_in_one_chunk_conserves_lines_and_builds_tables():
    lines = tuple(c[1] for c in CORPUS)
    tables, parsed = parse_chunk(LineChunk("hostile.jsonl", 0, 1, lines), POLICY)
    rows = sum(t.num_rows for t in tables.values())
    assert parsed.lines == rows == len(CORPUS)
    expected = [c[2] for c in CORPUS]
    assert tables["events"].num_rows == expected.count("event")
    assert tables["usage"].num_rows == expected.count("usage")
    buffer = io.BytesIO()
    for table in tables.values():
        pq.write_table(table, buffer)  # and each table can be written (strings are valid UTF-8)


def test_offsets_at_a_month_boundary_are_stored_in_utc():
    out = parse_lines([ev(INVOICE, occurred_at="2024-03-01T00:30:00+14:00"),
                       ev(INVOICE, event_id="e2", occurred_at="2024-02-29T23:30:00-12:00")],
                      "f.jsonl", 0, 1, POLICY)  # fmt: skip
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    got = [epoch + dt.timedelta(microseconds=us) for us in out.events["occurred_at"]]
    assert got == [dt.datetime(2024, 2, 29, 10, 30, tzinfo=dt.UTC), dt.datetime(2024, 3, 1, 11, 30, tzinfo=dt.UTC)]
    assert out.events["event_date"] == [dt.date(2024, 2, 29), dt.date(2024, 3, 1)]


def test_ids_made_long_by_redaction_become_one_token_and_stay_distinct():
    a = "x" * (MAX_ID - 13) + "a@b.c" + "y" * 8
    b = "x" * (MAX_ID - 13) + "b@b.c" + "y" * 8
    out = parse_lines([ev(INVOICE, event_id=("a@b.c," * 43)[:MAX_ID]), ev(INVOICE, event_id=a),
                       ev(INVOICE, event_id=b)], "f.jsonl", 0, 1, POLICY)  # fmt: skip
    ids = out.events["event_id"]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert all(len(i) <= MAX_ID and "@" not in i for i in ids)
    assert ids[0].startswith("[redacted:")


def test_email_and_card_never_in_dead_letter_message_or_event_id():
    out = parse_lines([ev(INVOICE, event_type="bob@example.com", event_id="bob@example.com"),
                       ev(INVOICE, occurred_at=f"{CARD} bob@example.com"),
                       ev(INVOICE, event_id="z" * 300 + "bob@example.com")], "f.jsonl", 0, 1, POLICY)  # fmt: skip
    assert out.dead["reason"] == ["unknown_event_type", "invalid_timestamp", "invalid_field"]
    text = json.dumps(out.dead)
    assert "example.com" not in text and CARD not in text
    assert all(len(i) <= MAX_ID for i in out.dead["event_id"])
