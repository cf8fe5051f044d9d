"""No card number and no email address reaches any table parse builds (CONTRACT section 1).

Card numbers and emails are planted in every field, as keys, nested, escaped, in bad lines
and in the file name; the resulting Arrow tables are scanned as Python values and as
uncompressed Parquet bytes.
"""

from __future__ import annotations

import io
import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import card_runs
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.ingest import LineChunk, parse_chunk
from transforms.parse import FIELDS
from transforms.redact import PiiPolicy, email_hmac

VISA, AMEX = "4111111111111111", "378282246310005"
EMAILS = ["Alice.Smith+billing@Example.co.uk", "bob@example.com", "c_d@sub.example.org"]


def spellings(card: str) -> list[str]:
    groups = [card[i : i + 4] for i in range(0, len(card), 4)] if len(card) == 16 else [card[:4], card[4:10], card[10:]]
    return [card, " ".join(groups), "-".join(groups), ".".join(groups), "  ".join(groups), "99" + card,
            card + "7", "ref 12 " + " ".join(groups)]  # fmt: skip


CARDS = spellings(VISA) + spellings(AMEX)
SECRETS = CARDS + EMAILS
KEY = b"leak-test-redaction-key"
EMAIL_KEY = b"leak-test-email-key"
POLICY = PiiPolicy(redaction_key=KEY, email_key=EMAIL_KEY)
HEX_COLUMNS = {"payload_sha256", "raw_sha256", "email_hmac"}
# what a tester would look for
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def _base(event_type: str, i: int) -> dict:
    row = {"event_id": f"e{i}", "event_type": event_type, "occurred_at": "2024-03-01T10:00:00Z", "customer_id": "c"}
    req, _ = FIELDS[event_type]
    for name in req:
        row[name] = {"currency": "USD", "unit_amount": 100, "amount": 100, "quantity": 1}.get(name, f"{name}-x")
    return row


def planted_lines() -> list[bytes]:
    lines: list[bytes] = []
    i = 0
    for event_type, (req, opt) in FIELDS.items():
        string_fields = ["event_id", "customer_id"] + [
            f for f in req + opt if f in {"subscription_id", "plan_id", "invoice_id", "meter", "name", "segment",
                                          "reason", "email"}]  # fmt: skip
        for secret in SECRETS:
            for field in string_fields:
                i += 1
                row = _base(event_type, i)
                row[field] = f"{field}-{secret}" if field != "email" else secret
                if field == "event_id":
                    row[field] = f"evt_{secret}_{event_type}"
                lines.append(json.dumps(row).encode())
            i += 1
            row = _base(event_type, i)
            row[secret] = secret  # as a key, top level
            row["attrs"] = {"deep": [{secret: [secret, {"x": secret}]}]}
            lines.append(json.dumps(row).encode())
            # bad lines of every kind carry it too
            bad = _base(event_type, i)
            for field, value in (("occurred_at", secret), ("event_type", secret), ("currency", secret),
                                 ("occurred_at", f"2024-03-01T10:00:00 {secret}")):  # fmt: skip
                lines.append(json.dumps({**bad, field: value, "event_id": f"bad-{secret}"}).encode())
            lines.append(f'{{"event_id": "trunc {secret}", "note": "{secret}'.encode())  # malformed
            lines.append(json.dumps([secret]).encode())  # not an object
            lines.append(b'{"x": "' + secret.encode() + b'\xff"}')  # invalid UTF-8
            lines.append(json.dumps({"deep": secret}).encode()[:-1] + b', "d": ' + b"[" * 100 + b"]" * 100 + b"}")
    # numbers, escapes and unicode spellings
    row = _base("invoice.paid", 10_000)
    lines.append(json.dumps({**row, "amount": int(AMEX)}).encode())
    lines.append(json.dumps({**row, "event_id": "num", "n": int(VISA), "f": float(VISA)}).encode())
    escaped_card = "".join(f"\\u{ord(c):04x}" for c in VISA)
    lines.append(json.dumps({**row, "event_id": "esc"}).encode()[:-1] + f', "x": "{escaped_card}"}}'.encode())
    lines.append(b'{"event_id": "esc2", "x": "bob\\u0040example.com", "y": "' + escaped_card.encode() + b'"')
    return lines


def _strings(value, column: str | None = None):
    if isinstance(value, str):
        yield column, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, column or k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, column)


@pytest.mark.parametrize("policy", [POLICY, PiiPolicy(KEY, None), None], ids=["keys", "no-email-key", "legacy-none"])
def test_no_card_or_email_in_any_table(policy):
    source_file = f"inbox/{' '.join([VISA[i:i + 4] for i in range(0, 16, 4)])}/{EMAILS[1]}-{AMEX}.jsonl"
    lines = planted_lines()
    tables, parsed = parse_chunk(LineChunk(source_file, 0, 1, tuple(lines)), policy)
    file_error, _ = parse_chunk(LineChunk(source_file, 1, 7, (), ("truncated_gzip", f"bad {source_file}")), policy)
    assert parsed.lines == sum(t.num_rows for t in tables.values()) == len(lines)
    assert tables["events"].num_rows > 100 and tables["dead_letter"].num_rows > 100
    everything = {**tables, "file_error": file_error["dead_letter"]}
    for name, table in everything.items():
        for column, text in _strings(table.to_pylist()):
            if column in HEX_COLUMNS:
                assert re.fullmatch(r"[0-9a-f]{64}", text), (name, column, text)
                continue
            assert not card_runs(text), (name, column, text[:200])
            assert not EMAIL_RE.search(text), (name, column, text[:200])
            for secret in SECRETS:
                assert secret not in text and secret.lower() not in text
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="NONE")
        blob = buffer.getvalue()
        for secret in SECRETS:
            assert secret.encode() not in blob and secret.lower().encode() not in blob, (name, secret)
        assert not re.search(rb"[\w.+-]+@[\w-]+\.[\w.-]+", blob), name
    # the known email field is a keyed hash of the address, or not stored without an email key
    hashes = set(tables["events"]["email_hmac"].to_pylist()) - {None}
    if policy is POLICY:
        assert email_hmac(EMAILS[0], EMAIL_KEY) in hashes
    else:
        assert hashes == set() and parsed.emails_dropped > 0


def test_ids_holding_different_cards_or_emails_stay_distinct():
    ids = [f"evt_{VISA}", f"evt_{AMEX}", "evt_5500000000000004", "evt_bob@example.com", "evt_ann@example.com",
           f"evt_99{VISA}", f"evt_{VISA[:4]} {VISA[4:8]} {VISA[8:12]} {VISA[12:]}"]  # fmt: skip
    rows = [json.dumps({"event_id": i, "event_type": "customer.created", "occurred_at": "2024-03-01T10:00:00Z",
                        "customer_id": i.replace("evt", "cus")}).encode() for i in ids]  # fmt: skip
    tables, _ = parse_chunk(LineChunk("f.jsonl", 0, 1, tuple(rows)), POLICY)
    stored = tables["events"]["event_id"].to_pylist()
    assert len(stored) == len(ids)
    # the last spells the first card with spaces: the same card, the same token
    assert len(set(stored[:-1])) == len(ids) - 1 and stored[-1] == stored[0]
    assert all("[card:" in s or "[email:" in s for s in stored)
    customers = tables["events"]["customer_id"].to_pylist()
    assert len(set(customers[:-1])) == len(ids) - 1
    # the same key gives the same tokens on the next run; another key gives others
    again, _ = parse_chunk(LineChunk("f.jsonl", 0, 1, tuple(rows)), PiiPolicy(KEY, None))
    other, _ = parse_chunk(LineChunk("f.jsonl", 0, 1, tuple(rows)), PiiPolicy(b"another key", None))
    assert again["events"]["event_id"].to_pylist() == stored
    assert set(other["events"]["event_id"].to_pylist()).isdisjoint(stored)


TEST_CARDS = ["4111111111111111", "4012888888881881", "5555555555554444", "378282246310005", "6011111111111117",
              "30569309025904", "3530111333300000", "4222222222222"]  # fmt: skip


@st.composite
def spelled_secret(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        local = draw(st.from_regex(r"[A-Za-z0-9._%+-]{1,12}", fullmatch=True))
        return f"{local}@{draw(st.sampled_from(['example.com', 'Mail.Example.ORG', 'x.io']))}"
    card = draw(st.sampled_from(TEST_CARDS))
    cuts = sorted(draw(st.sets(st.integers(1, len(card) - 1), max_size=6)))
    parts = [card[a:b] for a, b in zip([0, *cuts], [*cuts, len(card)], strict=True)]
    text = parts[0]
    for part in parts[1:]:
        text += draw(st.sampled_from([" ", "-", ".", "  ", " - ", "..", "   "])) + part
    return draw(st.from_regex(r"[a-z]{0,3}[0-9]{0,3}", fullmatch=True)) + text + draw(
        st.from_regex(r"[0-9]{0,3}[a-z]{0,3}", fullmatch=True))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["event_id", "customer_id", "invoice_id", "name", "note", "key", "deep",
                                           "occurred_at", "currency", "event_type"]), spelled_secret()),
                min_size=1, max_size=6),  # fmt: skip
       st.sampled_from(["customer.created", "invoice.paid", "usage.recorded"]))
def test_planted_secrets_never_survive(plants, event_type):
    row = _base(event_type, 1)
    for field, secret in plants:
        if field == "key":
            row[secret] = 1
        elif field == "deep":
            row["deep"] = [{"a": [secret]}]
        else:
            row[field] = f"{row.get(field, '')}{secret}"
    raw = json.dumps(row).encode()
    tables, parsed = parse_chunk(LineChunk(f"in/{plants[0][1]}.jsonl", 0, 1, (raw, raw[:-2])), POLICY)
    assert sum(t.num_rows for t in tables.values()) == parsed.lines == 2
    for table in tables.values():
        for column, text in _strings(table.to_pylist()):
            if column not in HEX_COLUMNS:
                assert not card_runs(text) and not EMAIL_RE.search(text), (column, text)


def test_dead_letter_digest_is_not_a_hash_of_the_card():
    """raw_sha256 beside the redacted raw text must not allow brute-forcing the few unknown digits."""
    import hashlib

    line = b'{"event_id": "x", "note": "4111 1111 1111 1111"'
    tables, _ = parse_chunk(LineChunk("f.jsonl", 0, 1, (line,)), POLICY)
    plain = hashlib.sha256(b"f.jsonl\x001\x00" + line).hexdigest()
    assert tables["dead_letter"]["raw_sha256"].to_pylist() != [plain]
    clean = b'{"event_id": "x", "note": "no card"'
    tables, _ = parse_chunk(LineChunk("f.jsonl", 0, 1, (clean,)), POLICY)
    assert tables["dead_letter"]["raw_sha256"].to_pylist() == [hashlib.sha256(b"f.jsonl\x001\x00" + clean).hexdigest()]
