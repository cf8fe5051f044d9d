"""Differential test: the vectorised parse (``transforms.fastparse``) against the per-line parser.

``parse_chunk(..., vectorised=False)`` runs ``parse_lines`` on every line: the reference. The
vectorised path must give the same staging tables (events, usage, dead_letter), row by row and
column by column, and the same line and email counts, on the hostile corpus, on hand-picked
edge cases around every fast-path rule, and on hypothesis-generated lines.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.transforms.test_hostile_input import (
    CORPUS,
    CUSTOMER,
    FAILED,
    INVOICE,
    SUB,
    USAGE,
    arrays,
    ev,
    nested,
    with_raw,
)
from tests.transforms.test_parse_properties import lines as property_lines
from tests.transforms.test_parse_properties import timestamps
from transforms.fastparse import CARD_CANDIDATE, FLAT_LINE, eligible, parse_chunk_lines
from transforms.ingest import (
    EVENTS_STAGING,
    USAGE_STAGING,
    LineChunk,
    parse_chunk,
    parse_chunks,
    read_file_chunks,
    split_lines,
)
from transforms.parse import FIELDS, MAX_DEPTH, MAX_ID, MAX_MINOR, MAX_NAME
from transforms.redact import PiiPolicy

POLICIES = {
    "keys": PiiPolicy(redaction_key=b"diff-redaction-key", email_key=b"diff-email-key"),
    "no_email_key": PiiPolicy(redaction_key=b"diff-redaction-key", email_key=None),
    "legacy_masks": None,
}
CARD = "4111111111111111"
CANCELED = {"event_id": "x1", "event_type": "subscription.canceled", "occurred_at": "2024-03-01T10:00:00Z",
            "customer_id": "c1", "subscription_id": "sub1"}  # fmt: skip
REFUND = {"event_id": "r1", "event_type": "charge.refunded", "occurred_at": "2024-03-01T10:00:00Z",
          "customer_id": "c1", "invoice_id": "in1", "currency": "usd", "amount": 100}  # fmt: skip
BASES = [INVOICE, SUB, FAILED, CUSTOMER, USAGE, CANCELED, REFUND]


def assert_same(raw_lines, pii=POLICIES["keys"], first_line=1, got=None):
    chunk = LineChunk("in/batch-07/diff.jsonl", 5, first_line, tuple(raw_lines))
    expected, expected_counts = parse_chunk(chunk, pii, vectorised=False)
    got, got_counts = got or parse_chunk(chunk, pii, vectorised=True)
    assert (got_counts.lines, got_counts.emails_dropped) == (expected_counts.lines, expected_counts.emails_dropped)
    for tag, table in expected.items():
        assert got[tag].schema == table.schema, tag
        want, have = table.to_pylist(), got[tag].to_pylist()
        for row_want, row_have in zip(want, have, strict=False):
            assert row_have == row_want, (tag, row_want.get("source_line"))
        assert len(have) == len(want), tag
        assert got[tag].equals(table), tag


# ------------------------------------------------------------------ hostile corpus


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_hostile_corpus_in_one_chunk(policy):
    assert_same([raw for _, raw, _ in CORPUS], POLICIES[policy], first_line=40)


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_each_hostile_line(raw, expected):
    assert_same([raw])


# ------------------------------------------------------------------ edge cases around each fast rule


def _spaced(row: dict) -> bytes:
    return json.dumps(row, separators=(" , ", " : ")).encode()


EDGES = [
    # eligible shapes: key order, spacing, CRLF, BOM
    ev(INVOICE), json.dumps(INVOICE, separators=(",", ":")).encode(), _spaced(SUB),
    json.dumps(dict(reversed(list(USAGE.items())))).encode(), ev(INVOICE) + b"\r", b"\xef\xbb\xbf" + ev(INVOICE),
    b" " + ev(INVOICE), ev(INVOICE) + b" ", b"{}", b'{"event_id":"e"}', b"",
    # personal data: cards in values, keys, nested objects; emails; escapes
    ev(INVOICE, note=CARD), ev(INVOICE, **{CARD: 1}), ev(INVOICE, x={"y": {"z": CARD}}), ev(INVOICE, x=[int(CARD)]),
    ev(INVOICE, event_id=f"evt_{CARD}"), ev(INVOICE, customer_id="4111 1111 1111 1111"),
    ev(INVOICE, invoice_id="in-1234-5678-9012-3456"), ev(CUSTOMER, email="Ann@Example.com"),
    ev(CUSTOMER, email=""), ev(CUSTOMER, email=5), ev(CUSTOMER, name="a@b.c"), ev(INVOICE, note="mail a@b.com"),
    ev(INVOICE, event_id="e\\u0031"), b'{"event_id": "e\\u0031", ' + ev(INVOICE)[1:], ev(INVOICE, event_id="\u00e9"),
    # NUL, control characters, lone surrogates, invalid UTF-8
    ev(INVOICE, event_id="a\x00b"), ev(REFUND, reason="x\x00y"), ev(INVOICE, event_id="a\tb"),
    b'{"event_id": "\\ud800", ' + ev(INVOICE)[1:], ev(INVOICE)[:-1] + b', "s": "\xed\xa0\x80"}', b"\xff" + ev(INVOICE),
    # numbers: 1e400, -0, floats, big ints, leading zeros, booleans
    ev(INVOICE)[:-1] + b', "x": 1e400}', ev(INVOICE)[:-1].replace(b'"amount": 1200', b'"amount": -0') + b"}",
    ev(INVOICE)[:-1].replace(b'"amount": 1200', b'"amount": 01200') + b"}", ev(INVOICE, amount=1200.0),
    ev(INVOICE, amount=True), ev(INVOICE, amount=None), ev(INVOICE, amount=MAX_MINOR), ev(INVOICE, amount=MAX_MINOR + 1),
    ev(INVOICE, amount=2**63), ev(INVOICE, amount=2**64 + 1), ev(INVOICE, tax=1200), ev(INVOICE, tax=1201),
    ev(INVOICE, tax=0), ev(INVOICE, tax=...), ev(INVOICE, amount=0, tax=0), ev(INVOICE, amount=-1),
    ev(USAGE, quantity=0), ev(USAGE, quantity=0.5), ev(USAGE, quantity=497.16), ev(USAGE, quantity=0.001),
    ev(USAGE, quantity=0.0001), ev(USAGE, quantity=1.0), ev(USAGE, quantity=1.1234567891),
    ev(USAGE, quantity=10**15), ev(USAGE, quantity=10**15 + 1), ev(USAGE, quantity=123456789.125),
    ev(USAGE)[:-1].replace(b'"quantity": 1', b'"quantity": 1.10') + b"}",
    ev(USAGE)[:-1].replace(b'"quantity": 1', b'"quantity": 2.50E1') + b"}", ev(USAGE, quantity="1"),
    # duplicate keys (orjson keeps the last), unknown fields, nesting
    ev(INVOICE)[:-1] + b', "amount": 5}', ev(INVOICE)[:-1] + b', "event_id": "e2"}', ev(INVOICE)[:-1] + b', "note": 1, "note": 2}',
    ev(INVOICE, extra="x"), ev(INVOICE, extra={"a": [1, {"b": None}]}), ev(INVOICE, x=nested(63)), ev(INVOICE, x=nested(64)),
    ev(INVOICE, subscription_id=None), ev(INVOICE, period_start=None), ev(SUB, quantity=None),
    # identifiers and strings: 255/256 characters, empty, wrong types
    ev(INVOICE, event_id="x" * MAX_ID), ev(INVOICE, event_id="x" * (MAX_ID + 1)), ev(INVOICE, event_id=""),
    ev(INVOICE, customer_id="c" * MAX_ID), ev(INVOICE, customer_id="c" * (MAX_ID + 1)), ev(INVOICE, invoice_id=7),
    ev(USAGE, meter="m" * (MAX_ID + 1)), ev(USAGE, meter=""), ev(CUSTOMER, name="n" * MAX_NAME),
    ev(CUSTOMER, name="n" * (MAX_NAME + 1)), ev(CUSTOMER, name="Ann", country="de", segment="smb"),
    ev(CUSTOMER, country="DEU"), ev(CUSTOMER, country="d1"), ev(CUSTOMER, segment="s" * (MAX_ID + 1)),
    ev(REFUND, reason=""), ev(REFUND, reason="duplicate"), ev(REFUND, reason=3),
    # event types, currencies, intervals, MRR bound
    ev(INVOICE, event_type="Invoice.paid"), ev(INVOICE, event_type=None), ev(INVOICE, event_type=3),
    ev(INVOICE, currency="jpy"), ev(INVOICE, currency="KWD"), ev(INVOICE, currency="XYZ"), ev(INVOICE, currency="XAU"),
    ev(INVOICE, currency="US"), ev(INVOICE, currency=840),
    ev(SUB, interval="year", interval_count=2, quantity=3), ev(SUB, interval="week"), ev(SUB, interval="day", interval_count=7),
    ev(SUB, interval="Month"), ev(SUB, interval_count=0), ev(SUB, quantity=0), ev(SUB, quantity=10**9), ev(SUB, quantity=10**9 + 1),
    ev(SUB, unit_amount=MAX_MINOR, quantity=1), ev(SUB, unit_amount=MAX_MINOR, quantity=2),
    ev(SUB, unit_amount=MAX_MINOR, quantity=12, interval="year"), ev(SUB, unit_amount=MAX_MINOR, quantity=13, interval="year"),
    ev(SUB, unit_amount=3 * 10**14, quantity=1, interval="week"), ev(SUB, unit_amount=2 * 10**14, quantity=1, interval="week"),
    ev(SUB, unit_amount=10**13, interval="day"), ev(SUB, unit_amount=10**14, interval="day", interval_count=3),
    ev(FAILED, attempt=0), ev(FAILED, attempt=1), ev(FAILED, attempt=10**9 + 1),
    ev(CANCELED, effective_at="2024-04-01T00:00:00Z"), ev(SUB, trial_end="2024-04-01T00:00:00+14:00"),
    ev(INVOICE, period_start="2024-03-01T00:00:00Z", period_end="2024-04-01T00:00:00Z"),
    # timestamps: offsets at month and year boundaries, leap days, fractions, range ends, other spellings
    ev(INVOICE, occurred_at="2024-03-01T00:30:00+14:00"), ev(INVOICE, occurred_at="2024-02-29T23:30:00-14:00"),
    ev(INVOICE, occurred_at="2024-12-31T23:59:59-00:01"), ev(INVOICE, occurred_at="2024-01-01T00:00:00+23:59"),
    ev(INVOICE, occurred_at="2023-02-29T00:00:00Z"), ev(INVOICE, occurred_at="2000-02-29T00:00:00Z"),
    ev(INVOICE, occurred_at="2100-02-29T00:00:00Z"), ev(INVOICE, occurred_at="2024-04-31T00:00:00Z"),
    ev(INVOICE, occurred_at="2024-03-01T10:00:00.5Z"), ev(INVOICE, occurred_at="2024-03-01T10:00:00.123456Z"),
    ev(INVOICE, occurred_at="2024-03-01T10:00:00.1234567Z"), ev(INVOICE, occurred_at="2024-03-01t10:00:00z"),
    ev(INVOICE, occurred_at="2024-03-01 10:00:00Z"), ev(INVOICE, occurred_at="2024-03-01T10:00:00"),
    ev(INVOICE, occurred_at="2024-03-01T24:00:00Z"), ev(INVOICE, occurred_at="2024-03-01T10:00:60Z"),
    ev(INVOICE, occurred_at="2024-03-01T10:00:00+24:00"), ev(INVOICE, occurred_at="2024-13-01T10:00:00Z"),
    ev(INVOICE, occurred_at="1970-01-01T00:00:00Z"), ev(INVOICE, occurred_at="1970-01-01T00:30:00+01:00"),
    ev(INVOICE, occurred_at="1969-12-31T23:30:00-01:00"), ev(INVOICE, occurred_at="2199-12-31T23:59:59.999999Z"),
    ev(INVOICE, occurred_at="2199-12-31T23:30:00-01:00"), ev(INVOICE, occurred_at="2200-01-01T00:00:00Z"),
    ev(INVOICE, occurred_at="2199-12-31T23:30:00+01:00"), ev(INVOICE, occurred_at="+2024-03-01T10:00:00Z"),
    ev(INVOICE, occurred_at=""), ev(INVOICE, occurred_at=1709287200), ev(SUB, effective_at="2024-03-01"),
]


# the hostile cases issue 16 lists, beyond CORPUS and EDGES: each in more places than one
EMAIL = "bob@example.com"
HOSTILE = [
    # card numbers in nested objects and keys, in arrays, split by separators, in ids and enum fields
    ev(INVOICE, x={"a": [{"b": {CARD: CARD}}]}), ev(INVOICE, x=[[CARD, {"4111-1111-1111-1111": [1]}]]),
    ev(INVOICE, **{"4111 1111 1111 1111": {"4111.1111.1111.1111": "4111111111111111"}}),
    ev(SUB, plan_id=f"plan-{CARD}"), ev(SUB, subscription_id="4111 1111 1111 1111"), ev(USAGE, meter=CARD),
    ev(INVOICE, currency=CARD), ev(INVOICE, event_type=CARD), ev(SUB, interval=CARD), ev(INVOICE, amount=CARD),
    ev(CUSTOMER, name=f"Ann {CARD}", segment=CARD, country="DE"), ev(REFUND, reason=f"card {CARD} stolen"),
    # emails: as keys (top level and nested), in ids, in the email field with other PII, wrong types
    ev(INVOICE, **{EMAIL: 1}), ev(INVOICE, x={EMAIL: {"y": EMAIL}}), ev(CUSTOMER, email=EMAIL, name=EMAIL),
    ev(CUSTOMER, email=CARD), ev(CUSTOMER, email=[EMAIL]), ev(CUSTOMER, email=None), ev(USAGE, meter=EMAIL),
    ev(SUB, plan_id=EMAIL), ev(CUSTOMER, email=EMAIL)[:-1] + b', "email": "eve@example.com"}',
    # BOM: twice, in the middle, as a character inside a value, after CR
    b"\xef\xbb\xbf\xef\xbb\xbf" + ev(INVOICE), ev(INVOICE)[:20] + b"\xef\xbb\xbf" + ev(INVOICE)[20:],
    ev(INVOICE, event_id="e\ufeff1"), ev(INVOICE, note="\ufeff"), b"\xef\xbb\xbf" + ev(USAGE) + b"\r",
    # CR and CRLF: doubled, CR inside the object, escaped CR in ids and attributes
    ev(INVOICE) + b"\r\r", ev(INVOICE)[:-1] + b"\r}", b"\r" + ev(INVOICE), ev(INVOICE, customer_id="c\r1"),
    ev(INVOICE, note="a\r\nb"), b"\r",
    # NUL bytes: raw in keys, alone, before the object; escaped in every kind of field
    ev(INVOICE)[:-1] + b', "a\x00b": 1}', b"\x00", b"\x00" + ev(INVOICE), ev(INVOICE).replace(b": ", b":\x00 ", 1),
    ev(SUB, plan_id="p\x00"), ev(USAGE, meter="m\x00"), ev(INVOICE, currency="US\x00"), ev(CUSTOMER, email="a\x00@b.c"),
    # lone surrogates: in keys, in event_type, in an email, raw (CESU) bytes in an id
    ev(INVOICE)[:-1] + b', "\\udc00": 1}', ev(INVOICE, event_type=...)[:-1] + b', "event_type": "\\ud800"}',
    ev(CUSTOMER)[:-1] + b', "email": "a\\ud800@b.c"}', ev(INVOICE, event_id=...)[:-1] + b', "event_id": "\xed\xb0\x80"}',
    ev(INVOICE)[:-1] + b', "x": "\\ud83d"}', ev(INVOICE)[:-1] + b', "x": "\\ude00\\ud83d"}',
    # 1e400 and friends in every numeric field; -0 everywhere a number goes
    *[ev(base)[:-1] + f', "{name}": {num}}}'.encode()
      for base, name in ((SUB, "unit_amount"), (SUB, "quantity"), (SUB, "interval_count"), (INVOICE, "tax"),
                         (FAILED, "attempt"), (USAGE, "quantity"))
      for num in ("1e400", "-1e400", "1E400", "1e-400", "-0", "-0.0", "0e0", "-0e0")],
    # duplicate keys: equal values, in nested objects, on the usage quantity, on ids (last wins in orjson)
    ev(INVOICE)[:-1] + b', "amount": 1200}', ev(INVOICE, x={"k": 1})[:-1].replace(b'{"k": 1}', b'{"k": 1, "k": 2}') + b"}",
    ev(USAGE)[:-1] + b', "quantity": 2}', ev(USAGE)[:-1] + b', "quantity": -2}', ev(INVOICE)[:-1] + b', "currency": "XYZ"}',
    ev(INVOICE)[:-1] + f', "event_id": "{"x" * (MAX_ID + 1)}"}}'.encode(), ev(CUSTOMER)[:-1] + b', "customer_id": "c2"}',
    # deep nesting: arrays and objects at and past the limit, mixed, with PII at the bottom
    with_raw(INVOICE, "x", arrays(MAX_DEPTH - 1)), with_raw(INVOICE, "x", arrays(MAX_DEPTH)),
    with_raw(INVOICE, "x", nested(MAX_DEPTH - 1, f'"{EMAIL}"')), with_raw(USAGE, "x", "[{" * 40 + "1" + "}]" * 40),
    with_raw(CUSTOMER, "email", nested(3, f'"{EMAIL}"')),
    # 255 and 256 characters in every id-like field, in ASCII, 2-byte, astral and escaped characters
    *[ev(base, **{name: text}) for base, name in ((SUB, "subscription_id"), (SUB, "plan_id"), (INVOICE, "invoice_id"),
                                                  (USAGE, "meter"), (CUSTOMER, "segment"), (INVOICE, "customer_id"))
      for text in ("i" * MAX_ID, "i" * (MAX_ID + 1))],
    ev(INVOICE, event_id="\u00e9" * MAX_ID), ev(INVOICE, event_id="\u00e9" * (MAX_ID + 1)),
    ev(INVOICE, event_id="\U0001f600" * MAX_ID), ev(INVOICE, event_id="\U0001f600" * (MAX_ID + 1)),
    json.dumps({**INVOICE, "event_id": "\u00e9" * MAX_ID}, ensure_ascii=False).encode(),
    # offsets such as +14:00 at month and year boundaries, in every timestamp field
    ev(INVOICE, occurred_at="2025-01-01T13:59:59+14:00"), ev(INVOICE, occurred_at="2025-01-01T14:00:00+14:00"),
    ev(INVOICE, occurred_at="2024-12-31T10:00:00-14:00"), ev(INVOICE, occurred_at="2024-03-01T00:00:00.000001+14:00"),
    ev(INVOICE, occurred_at="2024-04-30T23:59:59.999999-00:30"), ev(INVOICE, occurred_at="1970-01-01T14:00:00+14:00"),
    ev(SUB, effective_at="2024-04-01T00:00:00+14:00", trial_end="2024-05-01T13:00:00+14:00"),
    ev(CANCELED, effective_at="2024-04-01T13:59:59+14:00"), ev(FAILED, occurred_at="2024-03-01T00:00:00-00:00"),
    ev(INVOICE, period_start="2024-02-01T00:00:00+14:00", period_end="2024-03-01T00:00:00+14:00"),
    ev(USAGE, occurred_at="2024-03-01T00:59:59+14:00"), ev(INVOICE, occurred_at="2024-03-01T00:30:00+14:60"),
]


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_issue_hostile_cases_in_one_chunk(policy):
    assert_same(HOSTILE, POLICIES[policy], first_line=7)


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_each_issue_hostile_case(raw):
    assert_same([raw])


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_chunks_parsed_together_give_each_chunk_its_own_result(policy):
    """Several chunks in one vectorised query (how ingest batches them): each equals its per-line parse."""
    pieces = [HOSTILE[:40], [], EDGES[:60], [ev(INVOICE), ev(USAGE)], HOSTILE[40:], [b""], EDGES[60:]]
    chunks = [LineChunk("in/batch-07/diff.jsonl", 5, 1 + 1000 * k, tuple(p)) for k, p in enumerate(pieces)]
    results = parse_chunks(chunks, POLICIES[policy])
    assert len(results) == len(chunks)
    for chunk, result in zip(chunks, results, strict=True):
        assert_same(chunk.lines, POLICIES[policy], first_line=chunk.first_line, got=result)


def test_a_file_with_bom_crlf_and_nul_bytes_read_in_small_chunks(tmp_path):
    """The same lines as read from a file (split on LF, CR kept), chunk boundaries inside the file."""
    body = (b"\xef\xbb\xbf" + ev(INVOICE) + b"\r\n" + ev(SUB) + b"\r\n\r\n" + ev(USAGE) + b"\x00\r\n"
            + ev(CUSTOMER, email=EMAIL) + b"\r\n" + ev(INVOICE, event_id="e2", occurred_at="2024-03-01T00:30:00+14:00"))
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(body)
    chunks = list(read_file_chunks(str(path), "crlf.jsonl", 0, chunk_lines=2))
    assert len(chunks) == 2 and sum(len(c.lines) for c in chunks) == 6  # the last line has no LF
    assert chunks[1].first_line == 1 + len(chunks[0].lines) and chunks[0].line_list()[0].endswith(b"\r")
    assert [line for c in chunks for line in c.line_list()] == body.split(b"\n")
    for chunk in chunks:
        assert_same(chunk.line_list(), first_line=chunk.first_line)
        as_arrow = LineChunk("in/batch-07/diff.jsonl", 5, chunk.first_line, chunk.lines)  # Arrow lines, as read
        assert_same(chunk.line_list(), first_line=chunk.first_line, got=parse_chunks([as_arrow], POLICIES["keys"])[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"\n", b"\r\n", b"a", b"{}", b"\x00", b"\xef\xbb\xbf", b" "]), max_size=40).map(b"".join))
def test_split_lines_is_bytes_split(data):
    lines, tail = split_lines(data)
    assert lines.type == pa.large_binary() and lines.to_pylist() + [tail] == data.split(b"\n")


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_edge_cases_in_one_chunk(policy):
    assert_same(EDGES, POLICIES[policy])


@pytest.mark.parametrize("raw", EDGES, ids=range(len(EDGES)))
def test_each_edge_case(raw):
    assert_same([raw], first_line=1000)


def test_the_fast_path_takes_the_clean_lines():
    """The differential tests prove something only if clean lines really take the fast path."""
    clean = [ev(INVOICE), _spaced(SUB), ev(USAGE, quantity=497.16), ev(CUSTOMER, name="Ann", country="de"),
             ev(CUSTOMER, email="a@b.c")]
    # eligible, then deferred by the query: an address outside the email field, an email that is a number
    deferred = [ev(CUSTOMER, email="a@b.c", name="x@y.z"), ev(CUSTOMER, email="a@b.c", segment="@"),
                ev(INVOICE, customer_id="c@d.e"), ev(CUSTOMER, email=7)]
    held_back = [ev(INVOICE, note=CARD), b"\xef\xbb\xbf" + ev(INVOICE), ev(INVOICE) + b"\r",
                 ev(INVOICE, extra={"a": 1}), ev(INVOICE, event_id="e\\u0031"), *deferred]  # fmt: skip
    positions = eligible(pa.array(clean + held_back, pa.binary())).tolist()
    assert positions == list(range(len(clean))) + list(range(len(clean + held_back) - len(deferred),
                                                               len(clean + held_back)))
    # and the fast path accepts them (a fast path that defers everything would pass every comparison)
    fast_events, fast_usage, slow = parse_chunk_lines(clean + held_back, "f.jsonl", 0, 1, POLICIES["keys"],
                                                      EVENTS_STAGING, USAGE_STAGING)  # fmt: skip
    assert fast_events.num_rows + fast_usage.num_rows == len(clean)
    assert len(slow.events["event_id"]) + len(slow.dead["reason"]) == len(held_back)
    assert FLAT_LINE.startswith("^") and CARD_CANDIDATE.endswith("{13}")


# ------------------------------------------------------------------ generated lines

ts_values = st.one_of(timestamps(), st.sampled_from(["2024-02-29T23:59:59.999999-14:00", "2199-12-31T23:59:59Z"]))
ids = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=300) | st.sampled_from(
    ["x" * MAX_ID, "x" * (MAX_ID + 1), "e", f"evt_{CARD}", "a@b.com"])  # fmt: skip
ints = st.integers(0, 2 * MAX_MINOR) | st.integers(-5, 20) | st.sampled_from([MAX_MINOR, 10**9, 10**9 + 1])
field_values = {
    "occurred_at": ts_values, "effective_at": ts_values, "trial_end": ts_values, "period_start": ts_values,
    "period_end": ts_values, "currency": st.sampled_from(["usd", "USD", "jpy", "KWD", "XYZ", "XAU", "eur"]),
    "interval": st.sampled_from(["day", "week", "month", "year", "Month"]), "unit_amount": ints, "amount": ints,
    "tax": ints, "quantity": ints | st.decimals(0, 10**6, places=3).map(float), "interval_count": ints, "attempt": ints,
    "country": st.sampled_from(["de", "US", "DEU", "1a"]), "name": ids, "segment": ids, "reason": ids,
    "email": ids | st.sampled_from([" Bob@Example.COM ", "a@@b", "@", "", "x@y.z", f"{CARD}@cards.example"]),
}  # fmt: skip


@st.composite
def near_valid_lines(draw) -> bytes:
    """Mostly fast-path-eligible lines that sit on or near each rule's boundary."""
    base = dict(draw(st.sampled_from(BASES)))
    event_type = base["event_type"]
    required, optional = FIELDS[event_type]
    for name in draw(st.lists(st.sampled_from(("event_id", "customer_id", *required, *optional)), max_size=4)):
        if draw(st.integers(0, 9)) == 0:
            base.pop(name, None)
        else:
            base[name] = draw(field_values.get(name, ids))
    items = draw(st.permutations(list(base.items())))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]))
    return json.dumps(dict(items), separators=sep).encode()


# each example is one vectorised parse of a chunk (a fixed cost of ~0.1 s): fewer, longer chunks test as
# many lines in less time, and a mismatch still shrinks to its one line
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(near_valid_lines(), min_size=1, max_size=36))
def test_generated_near_valid_lines(raw_lines):
    assert_same(raw_lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(property_lines() | near_valid_lines(), min_size=1, max_size=20), st.sampled_from(list(POLICIES)))
def test_generated_hostile_lines(raw_lines, policy):
    assert_same(raw_lines, POLICIES[policy])
