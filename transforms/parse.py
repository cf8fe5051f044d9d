"""Parse and validate event lines against the contract (CONTRACT section 1).

``parse_lines`` turns a chunk of raw lines into three column-oriented results:
accepted payment events, accepted usage events and dead letters. It is the only
per-line Python on the ingest hot path; everything after it works on Arrow tables.

Every line ends in exactly one of the three outputs. Dead-letter reason codes:

``empty_line``, ``line_too_long``, ``invalid_encoding``, ``malformed_json``,
``not_an_object``, ``missing_field``, ``invalid_field``, ``unknown_event_type``,
``naive_timestamp``, ``invalid_timestamp``, ``negative_amount``,
``unknown_currency``; later stages add ``conflicting_duplicate`` (same
``event_id``, different payload), ``truncated_gzip`` and ``unreadable_file``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import orjson

from transforms.money import INTERVALS, UnknownCurrency, currency_exponent
from transforms.redact import email_hmac, may_contain_card, redact_emails, redact_text, redact_value
from transforms.schemas import EVENT_TYPES

MAX_LINE_BYTES = 1 << 20  # longer lines are dead-lettered as line_too_long
RAW_LIMIT = 4096  # characters of raw text kept in a dead letter
MAX_ID = 255
MAX_MINOR = 10**15  # a money amount above this (10 trillion USD) is a data error, not revenue
MIN_YEAR = 1970
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_US = dt.timedelta(microseconds=1)

REASONS = (
    "empty_line",
    "line_too_long",
    "invalid_encoding",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "unknown_event_type",
    "naive_timestamp",
    "invalid_timestamp",
    "negative_amount",
    "unknown_currency",
    "conflicting_duplicate",
    "truncated_gzip",
    "unreadable_file",
)

COMMON = ("event_id", "event_type", "occurred_at", "customer_id")
_SUB = ("quantity", "interval", "interval_count", "trial_end", "effective_at")
# event_type -> (required, optional) beyond the common fields
FIELDS = {
    "customer.created": ((), ("email", "name", "country", "segment")),
    "subscription.created": (("subscription_id", "plan_id", "currency", "unit_amount"), _SUB),
    "subscription.updated": (("subscription_id", "plan_id", "currency", "unit_amount"), _SUB),
    "subscription.canceled": (("subscription_id",), ("effective_at",)),
    "invoice.paid": (("invoice_id", "currency", "amount"), ("subscription_id", "tax", "period_start", "period_end")),
    "invoice.payment_failed": (("invoice_id", "currency", "amount"), ("subscription_id", "attempt")),
    "charge.refunded": (("invoice_id", "currency", "amount"), ("reason",)),
    "usage.recorded": (("meter", "quantity"), ("subscription_id",)),
}
assert set(FIELDS) == set(EVENT_TYPES)
KNOWN = {t: frozenset(COMMON) | frozenset(req) | frozenset(opt) for t, (req, opt) in FIELDS.items()}

EVENT_COLUMNS = (
    "event_id", "event_type", "occurred_at", "customer_id", "subscription_id", "plan_id", "invoice_id",
    "currency", "currency_exponent", "unit_amount", "quantity", "interval", "interval_count", "trial_end",
    "effective_at", "amount", "tax", "period_start", "period_end", "attempt", "reason", "email_hmac",
    "name", "country", "segment", "attributes", "payload_sha256", "source_file", "source_line",
)  # fmt: skip
USAGE_COLUMNS = (
    "event_id", "event_type", "occurred_at", "customer_id", "meter", "quantity", "subscription_id",
    "attributes", "payload_sha256", "source_file", "source_line",
)  # fmt: skip
DEAD_COLUMNS = ("source_file", "source_line", "raw", "raw_sha256", "message", "event_id", "reason")
# staging-only columns carried from parse to dedup
STAGE_COLUMNS = ("event_date", "file_index")


class Reject(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_timestamp(value, name: str) -> dt.datetime:
    """RFC 3339 with an offset -> aware UTC datetime; naive or malformed values are rejected."""
    if not isinstance(value, str):
        raise Reject("invalid_field", f"{name} must be an RFC 3339 string")
    if len(value) < 16 or value[10] not in "Tt ":
        raise Reject("invalid_timestamp", f"{name} {value[:40]!r} is not an RFC 3339 date-time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Reject("invalid_timestamp", f"{name} {value[:40]!r} is not an RFC 3339 date-time") from None
    if parsed.tzinfo is None:
        raise Reject("naive_timestamp", f"{name} {value[:40]!r} has no UTC offset")
    parsed = parsed.astimezone(dt.UTC)
    if parsed.year < MIN_YEAR:
        raise Reject("invalid_timestamp", f"{name} {value[:40]!r} is before {MIN_YEAR}")
    return parsed


def _micros(ts: dt.datetime) -> int:
    return (ts - EPOCH) // ONE_US


def _string(obj: dict, name: str, required: bool, max_len: int = MAX_ID) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise Reject("missing_field", f"{name} is required")
        return None
    if not isinstance(value, str) or not (1 <= len(value) <= max_len):
        raise Reject("invalid_field", f"{name} must be a string of 1..{max_len} characters")
    return value


def _int(obj: dict, name: str, required: bool, minimum: int, money: bool = False) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise Reject("missing_field", f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        unit = " in minor units" if money else ""
        raise Reject("invalid_field", f"{name} must be an integer{unit}, got {type(value).__name__}")
    if money and value < 0:
        raise Reject("negative_amount", f"{name} is negative ({value})")
    if value < minimum:
        raise Reject("invalid_field", f"{name} must be >= {minimum}, got {value}")
    if money and value > MAX_MINOR:
        raise Reject("invalid_field", f"{name} {value} exceeds the plausible maximum {MAX_MINOR}")
    return value


def _currency(obj: dict) -> tuple[str, int]:
    value = obj.get("currency")
    if value is None:
        raise Reject("missing_field", "currency is required")
    if not isinstance(value, str):
        raise Reject("invalid_field", "currency must be an ISO 4217 code string")
    code = value.upper()
    try:
        return code, currency_exponent(code)
    except UnknownCurrency:
        raise Reject("unknown_currency", f"unknown ISO 4217 currency {value[:12]!r}") from None


def _quantity(value) -> Decimal:
    if value is None:
        raise Reject("missing_field", "quantity is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Reject("invalid_field", "quantity must be a number")
    # repr() of a float is its shortest round-tripping decimal: the number the sender wrote
    try:
        quantity = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    except InvalidOperation:
        raise Reject("invalid_field", "quantity is not a finite number") from None
    if not quantity.is_finite() or quantity < 0:
        raise Reject("invalid_field", f"quantity must be a finite number >= 0, got {value!r}")
    if quantity >= Decimal(10) ** 28 or quantity != quantity.quantize(Decimal("1e-9")):
        raise Reject("invalid_field", "quantity needs at most 28 integer digits and 9 decimals")
    return quantity


@dataclass
class ParsedChunk:
    events: dict[str, list] = field(default_factory=lambda: {c: [] for c in EVENT_COLUMNS + STAGE_COLUMNS})
    usage: dict[str, list] = field(default_factory=lambda: {c: [] for c in USAGE_COLUMNS + STAGE_COLUMNS})
    dead: dict[str, list] = field(default_factory=lambda: {c: [] for c in DEAD_COLUMNS + ("file_index",)})
    lines: int = 0
    emails_dropped: int = 0

    def add_dead(self, source_file, file_index, line_no, raw_text, raw_bytes, reason, message, event_id=None):
        self.dead["source_file"].append(source_file)
        self.dead["source_line"].append(line_no)
        self.dead["raw"].append(truncate_raw(redact_emails(redact_text(raw_text))))
        self.dead["raw_sha256"].append(dead_letter_key(source_file, line_no, raw_bytes))
        self.dead["message"].append(redact_text(message))
        self.dead["event_id"].append(redact_text(event_id) if isinstance(event_id, str) else None)
        self.dead["reason"].append(reason)
        self.dead["file_index"].append(file_index)


def dead_letter_key(source_file: str, line_no: int, raw_bytes: bytes) -> str:
    """Identity of a rejected line: where it was and what it said (re-ingesting it is a duplicate)."""
    digest = hashlib.sha256(f"{source_file}\x00{line_no}\x00".encode())
    digest.update(raw_bytes)
    return digest.hexdigest()


def truncate_raw(text: str) -> str:
    if len(text) <= RAW_LIMIT:
        return text
    cut = text[:RAW_LIMIT].rstrip("0123456789 -")  # never leave a partial card number at the cut
    return cut + f"...[truncated, {len(text)} characters]"


def canonical_json(obj: dict) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def shard_of(event_id: str, shards: int) -> int:
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % shards if shards > 1 else 0


def parse_lines(
    lines: list[bytes],
    source_file: str,
    file_index: int,
    first_line_no: int,
    pii_key: bytes | None,
    out: ParsedChunk | None = None,
) -> ParsedChunk:
    """Parse raw lines (without their newline) numbered from ``first_line_no``."""
    out = out or ParsedChunk()
    line_no = first_line_no - 1
    for raw in lines:
        line_no += 1
        out.lines += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > MAX_LINE_BYTES:
            text = raw[: RAW_LIMIT * 4].decode("utf-8", "replace")
            out.add_dead(source_file, file_index, line_no, text + " ", raw, "line_too_long",
                         f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES}-byte limit")  # fmt: skip
            continue
        if not raw.strip():
            out.add_dead(source_file, file_index, line_no, "", raw, "empty_line", "blank line")
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                out.add_dead(source_file, file_index, line_no, raw.decode("utf-8", "replace"), raw,
                             "invalid_encoding", "line is not valid UTF-8")  # fmt: skip
                continue
            out.add_dead(source_file, file_index, line_no, text, raw, "malformed_json", f"malformed JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            out.add_dead(source_file, file_index, line_no, raw.decode(), raw, "not_an_object",
                         "line is JSON but not an object")  # fmt: skip
            continue
        if may_contain_card(raw):
            obj = redact_value(obj)
        if "email" in obj and isinstance(obj["email"], str):
            # from here on the payload (digest, staging, conflicts) never holds the address itself
            if pii_key:
                obj["email"] = email_hmac(obj["email"], pii_key)
            else:
                del obj["email"]
                out.emails_dropped += 1
        try:
            _accept(obj, out, source_file, file_index, line_no, pii_key)
        except Reject as rej:
            event_id = obj.get("event_id")
            out.add_dead(source_file, file_index, line_no, raw.decode(), raw, rej.reason, rej.message,
                         event_id if isinstance(event_id, str) else None)  # fmt: skip
    return out


def _accept(obj: dict, out: ParsedChunk, source_file: str, file_index: int, line_no: int, pii_key) -> None:
    event_id = _string(obj, "event_id", True)
    event_type = obj.get("event_type")
    if event_type is None:
        raise Reject("missing_field", "event_type is required")
    if event_type not in FIELDS:
        raise Reject("unknown_event_type", f"unknown event_type {str(event_type)[:60]!r}")
    occurred = parse_timestamp(obj.get("occurred_at") or _missing("occurred_at"), "occurred_at")
    customer_id = _string(obj, "customer_id", True)
    known = KNOWN[event_type]
    extra = {k: v for k, v in obj.items() if k not in known} if len(obj) > len(known) or not known.issuperset(obj) else None
    attributes = orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode() if extra else None
    digest = hashlib.sha256(canonical_json(obj)).hexdigest()

    if event_type == "usage.recorded":
        meter = _string(obj, "meter", True)
        quantity = _quantity(obj.get("quantity"))
        subscription_id = _string(obj, "subscription_id", False)
        cols = out.usage
        row = (event_id, event_type, _micros(occurred), customer_id, meter, quantity, subscription_id,
               attributes, digest, source_file, line_no)  # fmt: skip
        for name, value in zip(USAGE_COLUMNS, row, strict=True):
            cols[name].append(value)
    else:
        v = dict.fromkeys(EVENT_COLUMNS)
        v["event_id"], v["event_type"], v["customer_id"] = event_id, event_type, customer_id
        v["occurred_at"] = _micros(occurred)
        if event_type == "customer.created":
            email = obj.get("email")
            if email is not None and not isinstance(email, str):
                raise Reject("invalid_field", "email must be a string")
            v["email_hmac"] = email  # already replaced by its keyed hash in parse_lines
            v["name"] = _string(obj, "name", False, 1000)
            country = _string(obj, "country", False, 2)
            if country is not None and not (len(country) == 2 and country.isascii() and country.isalpha()):
                raise Reject("invalid_field", f"country {country!r} is not an ISO 3166-1 alpha-2 code")
            v["country"] = country.upper() if country else None
            v["segment"] = _string(obj, "segment", False)
        elif event_type in ("subscription.created", "subscription.updated"):
            v["subscription_id"] = _string(obj, "subscription_id", True)
            v["plan_id"] = _string(obj, "plan_id", True)
            v["currency"], v["currency_exponent"] = _currency(obj)
            v["unit_amount"] = _int(obj, "unit_amount", True, 0, money=True)
            v["quantity"] = _int(obj, "quantity", False, 1) or 1
            interval = obj.get("interval", "month")
            if interval not in INTERVALS:
                raise Reject("invalid_field", f"interval must be one of {', '.join(INTERVALS)}")
            v["interval"] = interval
            v["interval_count"] = _int(obj, "interval_count", False, 1) or 1
            if obj.get("trial_end") is not None:
                v["trial_end"] = _micros(parse_timestamp(obj["trial_end"], "trial_end"))
            eff = obj.get("effective_at")
            v["effective_at"] = _micros(parse_timestamp(eff, "effective_at")) if eff is not None else v["occurred_at"]
        elif event_type == "subscription.canceled":
            v["subscription_id"] = _string(obj, "subscription_id", True)
            eff = obj.get("effective_at")
            v["effective_at"] = _micros(parse_timestamp(eff, "effective_at")) if eff is not None else v["occurred_at"]
        else:  # invoice.paid, invoice.payment_failed, charge.refunded
            v["invoice_id"] = _string(obj, "invoice_id", True)
            v["currency"], v["currency_exponent"] = _currency(obj)
            v["amount"] = _int(obj, "amount", True, 0, money=True)
            if event_type == "invoice.paid":
                v["subscription_id"] = _string(obj, "subscription_id", False)
                v["tax"] = _int(obj, "tax", False, 0, money=True) or 0
                if v["tax"] > v["amount"]:
                    raise Reject("invalid_field", f"tax {v['tax']} exceeds the invoice amount {v['amount']}")
                for name in ("period_start", "period_end"):
                    if obj.get(name) is not None:
                        v[name] = _micros(parse_timestamp(obj[name], name))
            elif event_type == "invoice.payment_failed":
                v["subscription_id"] = _string(obj, "subscription_id", False)
                v["attempt"] = _int(obj, "attempt", False, 1)
            else:
                reason = obj.get("reason")
                if reason is not None and not isinstance(reason, str):
                    raise Reject("invalid_field", "reason must be a string")
                v["reason"] = reason
        v["attributes"], v["payload_sha256"] = attributes, digest
        v["source_file"], v["source_line"] = source_file, line_no
        cols = out.events
        for name in EVENT_COLUMNS:
            cols[name].append(v[name])
    cols["event_date"].append(occurred.date())
    cols["file_index"].append(file_index)


def _missing(name: str):
    raise Reject("missing_field", f"{name} is required")
