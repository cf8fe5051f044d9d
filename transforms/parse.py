"""Parse and validate event lines against the contract (CONTRACT section 1).

``parse_lines`` turns a chunk of raw lines into three column-oriented results:
accepted payment events, accepted usage events and dead letters. It is the reference
definition of every rule; on the ingest hot path ``transforms.fastparse`` accepts the lines it
can prove clean and valid a chunk at a time (with these constants) and hands every other line
to ``parse_lines``, which alone writes dead letters and redacts.

Every line ends in exactly one of the three outputs, whatever its bytes: parsing never
raises on input. Dead-letter reason codes:

``empty_line``, ``line_too_long``, ``invalid_encoding``, ``malformed_json``,
``too_deeply_nested`` (objects/arrays nested deeper than ``MAX_DEPTH``),
``not_an_object``, ``missing_field``, ``invalid_field``, ``unknown_event_type``,
``naive_timestamp``, ``invalid_timestamp`` (also: outside ``TS_MIN`` .. ``TS_MAX``),
``negative_amount``, ``out_of_range`` (a number above its bound, below),
``unknown_currency``; later stages add ``conflicting_duplicate`` (same ``event_id``,
different payload), ``truncated_gzip`` and ``unreadable_file``.

Bounds, so that an accepted event can never break a later stage (int64 columns,
decimal(38, 6) money, decimal(38, 9) quantities, day-by-day FX and month spines):

* timestamps (``occurred_at``, ``effective_at``, ``trial_end``, ``period_start``,
  ``period_end``): ``TS_MIN`` (1970-01-01T00:00:00Z) <= t < ``TS_MAX`` (2200-01-01T00:00:00Z);
* ``unit_amount``, ``amount``, ``tax``: 0 .. ``MAX_MINOR`` (10^15 minor units);
* a subscription's MRR, ``unit_amount x quantity x monthly factor`` (CONTRACT section 2),
  at most ``MAX_MRR_MINOR`` (10^15 minor units);
* ``quantity`` (subscriptions), ``interval_count``, ``attempt``: 1 .. ``MAX_COUNT`` (10^9);
* usage ``quantity``: 0 .. ``MAX_USAGE_QUANTITY`` (10^15), at most 9 decimals
  (``schemas.QUANTITY``), so 10^14 events can be summed in decimal(38, 9);
* identifiers: 1 .. ``MAX_ID`` (255) characters, no control characters;
  ``name`` at most ``MAX_NAME`` characters.

Personal data is handled by ``transforms.redact`` (see its docstring for the policy),
driven by a ``PiiPolicy``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import orjson

from transforms.money import INTERVALS, UnknownCurrency, currency_exponent, monthly_factor
from transforms.redact import PiiPolicy, as_policy, email_hmac, may_contain_card, unescape_json_text
from transforms.schemas import EVENT_TYPES, FIRST_SUPPORTED_DAY, LAST_SUPPORTED_DAY, QUANTITY

MAX_LINE_BYTES = 1 << 20  # longer lines are dead-lettered as line_too_long
RAW_LIMIT = 4096  # characters of raw text kept in a dead letter
MAX_DEPTH = 64  # deepest nesting of objects/arrays accepted in a line
MAX_ID = 255
MAX_NAME = 1000
MAX_MINOR = 10**15  # a money amount above this (10 trillion USD) is a data error, not revenue
MAX_MRR_MINOR = MAX_MINOR  # a subscription's monthly recurring amount, minor units
MAX_COUNT = 10**9  # subscription quantity, interval_count, attempt
MAX_USAGE_QUANTITY = 10**15
QUANTITY_QUANTUM = Decimal(1).scaleb(-QUANTITY.scale)  # usage quantities: 9 decimals
# accepted timestamps: TS_MIN <= t < TS_MAX, the lake's supported days (transforms.schemas)
TS_MIN = dt.datetime.combine(FIRST_SUPPORTED_DAY, dt.time(), dt.UTC)
TS_MAX = dt.datetime.combine(LAST_SUPPORTED_DAY + dt.timedelta(days=1), dt.time(), dt.UTC)
EPOCH = TS_MIN
ONE_US = dt.timedelta(microseconds=1)
UTF8_BOM = b"\xef\xbb\xbf"

REASONS = (
    "empty_line",
    "line_too_long",
    "invalid_encoding",
    "malformed_json",
    "too_deeply_nested",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "unknown_event_type",
    "naive_timestamp",
    "invalid_timestamp",
    "negative_amount",
    "out_of_range",
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
# defaults of optional fields (CONTRACT section 1), shared with the vectorised path (transforms.fastparse)
DEFAULT_QUANTITY, DEFAULT_INTERVAL, DEFAULT_INTERVAL_COUNT, DEFAULT_TAX = 1, "month", 1, 0
# integer fields: (minimum, maximum); the usage quantity is a decimal (``_quantity``)
INT_BOUNDS = {**dict.fromkeys(("unit_amount", "amount", "tax"), (0, MAX_MINOR)),
              **dict.fromkeys(("quantity", "interval_count", "attempt"), (1, MAX_COUNT))}  # fmt: skip
KNOWN = {t: frozenset(COMMON) | frozenset(req) | frozenset(opt) for t, (req, opt) in FIELDS.items()}
# string fields with a length limit, checked as sent (before redaction may change their length)
IDENTIFIERS = ("event_id", "customer_id", "subscription_id", "plan_id", "invoice_id", "meter")
LENGTH_LIMITS = {**dict.fromkeys(IDENTIFIERS, MAX_ID), "segment": MAX_ID, "name": MAX_NAME}

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

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_SPECIAL = re.compile(rb'["\\\[\]{}]')
_QUOTE, _BACKSLASH, _OPENERS, _CLOSERS = ord('"'), ord("\\"), b"[{", b"]}"
_YEAR_MIN, _YEAR_MAX = TS_MIN.year - 1, TS_MAX.year  # local years that can convert to UTC without overflow
_TS_RANGE = f"{TS_MIN:%Y-%m-%dT%H:%M:%SZ} <= t < {TS_MAX:%Y-%m-%dT%H:%M:%SZ}"


class Reject(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_timestamp(value, name: str) -> dt.datetime:
    """RFC 3339 with an offset -> aware UTC datetime in [TS_MIN, TS_MAX); anything else is rejected."""
    if not isinstance(value, str):
        raise Reject("invalid_field", f"{name} must be an RFC 3339 string")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise Reject("invalid_timestamp", f"{name} {value[:40]!r} is not an RFC 3339 date-time")
    if match.group(1) is None:
        raise Reject("naive_timestamp", f"{name} {value!r} has no UTC offset")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        try:  # RFC 3339 allows a lower-case t and z
            parsed = dt.datetime.fromisoformat(value.upper())
        except ValueError:
            raise Reject("invalid_timestamp", f"{name} {value!r} is not an RFC 3339 date-time") from None
    # check the year first: converting 0001-01-01T00:30+01:00 to UTC would overflow
    if not (_YEAR_MIN <= parsed.year <= _YEAR_MAX):
        raise Reject("invalid_timestamp", f"{name} {value!r} is outside the accepted range {_TS_RANGE}")
    parsed = parsed.astimezone(dt.UTC)
    if not (TS_MIN <= parsed < TS_MAX):
        raise Reject("invalid_timestamp", f"{name} {value!r} is outside the accepted range {_TS_RANGE}")
    return parsed


def too_deeply_nested(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if objects/arrays in a raw JSON line nest deeper than ``limit`` (brackets in strings don't count).

    Linear in the line's length, no recursion; called before orjson, which raises on deep input.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case: cannot be deeper
        return False
    depth = 0
    in_string = False
    escaped_at = -1  # position of the character after a backslash inside a string
    for match in _JSON_SPECIAL.finditer(raw):
        pos = match.start()
        if pos == escaped_at:
            continue
        ch = raw[pos]
        if in_string:
            if ch == _BACKSLASH:
                escaped_at = pos + 1
            elif ch == _QUOTE:
                in_string = False
        elif ch == _QUOTE:
            in_string = True
        elif ch in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif ch in _CLOSERS:
            depth -= 1
    return False


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
    return value  # control characters can only come from escapes: see _protect


def _int(obj: dict, name: str, required: bool, minimum: int, maximum: int, money: bool = False) -> int | None:
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
    if value > maximum:
        raise Reject("out_of_range", f"{name} {value} exceeds the maximum {maximum}")
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
    if quantity > MAX_USAGE_QUANTITY:
        raise Reject("out_of_range", f"quantity {value!r} exceeds the maximum {MAX_USAGE_QUANTITY}")
    if quantity != quantity.quantize(QUANTITY_QUANTUM):  # safe: at most 16 + 9 digits here
        raise Reject("invalid_field", f"quantity needs at most {QUANTITY.scale} decimals")
    return quantity


@lru_cache(maxsize=256)
def _monthly_factor(interval: str, interval_count: int) -> Fraction:
    return monthly_factor(interval, interval_count)


@dataclass
class ParsedChunk:
    events: dict[str, list] = field(default_factory=lambda: {c: [] for c in EVENT_COLUMNS + STAGE_COLUMNS})
    usage: dict[str, list] = field(default_factory=lambda: {c: [] for c in USAGE_COLUMNS + STAGE_COLUMNS})
    dead: dict[str, list] = field(default_factory=lambda: {c: [] for c in DEAD_COLUMNS + ("file_index",)})
    lines: int = 0
    emails_dropped: int = 0

    def add_dead(self, source_file, file_index, line_no, raw_text, raw_bytes, reason, message, event_id=None,
                 policy: PiiPolicy | None = None):  # fmt: skip
        """Record a dead letter; raw text, message and event id are redacted here (``source_file`` must be)."""
        policy = policy or as_policy(None)
        scanned = unescape_json_text(raw_text)
        redacted = policy.redact(scanned)
        if redacted != scanned:
            # a digest of the original bytes next to the redacted text would let anyone
            # brute-force the card number back (few unknown digits): digest what is stored
            raw_bytes = redacted.encode("utf-8", "surrogatepass")
        self.dead["source_file"].append(source_file)
        self.dead["source_line"].append(line_no)
        self.dead["raw"].append(truncate_raw(redacted))
        self.dead["raw_sha256"].append(dead_letter_key(source_file, line_no, raw_bytes))
        self.dead["message"].append(truncate_raw(policy.redact(message)))
        self.dead["event_id"].append(policy.redact(event_id)[:MAX_ID] if isinstance(event_id, str) else None)
        self.dead["reason"].append(reason)
        self.dead["file_index"].append(file_index)


def dead_letter_key(source_file: str, line_no: int, raw_bytes: bytes) -> str:
    """Identity of a rejected line: where it was and what it said (re-ingesting it is a duplicate)."""
    digest = hashlib.sha256(f"{source_file}\x00{line_no}\x00".encode("utf-8", "surrogatepass"))
    digest.update(raw_bytes)
    return digest.hexdigest()


def truncate_raw(text: str) -> str:
    if len(text) <= RAW_LIMIT:
        return text
    cut = text[:RAW_LIMIT].rstrip("0123456789 -.")  # never leave a partial card number at the cut
    return cut + f"...[truncated, {len(text)} characters]"


def canonical_json(obj: dict) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def parse_lines(
    lines: list[bytes],
    source_file: str,
    file_index: int,
    first_line_no: int,
    pii: PiiPolicy | bytes | None,
    out: ParsedChunk | None = None,
    line_numbers: Sequence[int] | None = None,
) -> ParsedChunk:
    """Parse raw lines (without their newline) numbered from ``first_line_no``.

    ``pii`` is a ``PiiPolicy``; the legacy ``pii_key`` (bytes or None) is still accepted
    (``transforms.redact.as_policy``). ``source_file`` is redacted (``redact_path``) before
    it is stored. Never raises on line content. ``line_numbers``, if given, numbers each line
    (the vectorised path hands over only the lines it did not accept) instead of ``first_line_no``.
    """
    policy = as_policy(pii)
    out = out or ParsedChunk()
    source_file = policy.redact_path(source_file)

    def dead(line_no: int, raw: bytes, text: str, reason: str, message: str, event_id=None) -> None:
        out.add_dead(source_file, file_index, line_no, text, raw, reason, message, event_id, policy)

    numbers = range(first_line_no, first_line_no + len(lines)) if line_numbers is None else line_numbers
    for line_no, raw in zip(numbers, lines, strict=True):
        out.lines += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if raw.startswith(UTF8_BOM):  # editors on Windows write one; it is not part of the JSON
            raw = raw[len(UTF8_BOM) :]

        if len(raw) > MAX_LINE_BYTES:
            text = raw[: RAW_LIMIT * 4].decode("utf-8", "replace")
            message = f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES}-byte limit"
            dead(line_no, raw, text + " ", "line_too_long", message)
            continue
        if not raw.strip():
            dead(line_no, raw, "", "empty_line", "blank line")
            continue
        if too_deeply_nested(raw):
            dead(line_no, raw, raw.decode("utf-8", "replace"), "too_deeply_nested",
                 f"objects/arrays nested deeper than {MAX_DEPTH} levels")  # fmt: skip
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                dead(line_no, raw, raw.decode("utf-8", "replace"), "invalid_encoding", "line is not valid UTF-8")
                continue
            dead(line_no, raw, text, "malformed_json", f"malformed JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            dead(line_no, raw, raw.decode(), "not_an_object", "line is JSON but not an object")
            continue
        try:
            obj = _protect(obj, raw, policy, out)
            _accept(obj, out, source_file, file_index, line_no)
        except Reject as rej:
            event_id = obj.get("event_id")
            event_id = event_id if isinstance(event_id, str) else None
            dead(line_no, raw, raw.decode(), rej.reason, rej.message, event_id)
    return out


def _protect(obj: dict, raw: bytes, policy: PiiPolicy, out: ParsedChunk) -> dict:
    """Redact card numbers and emails everywhere in a parsed line; keep the email field only as a keyed hash."""
    email = obj.pop("email", None) if isinstance(obj.get("email"), str) else None
    # cheap checks on the raw bytes first: most lines hold no digit run and no '@' besides
    # the one in their email field, and skip the walk
    if may_contain_card(raw) or raw.count(b"@") > (email or "").count("@"):
        _check_strings_as_sent(obj, raw)
        redacted = policy.redact_value(obj)
        for name, limit in LENGTH_LIMITS.items():
            value = redacted.get(name)
            if isinstance(value, str) and len(value) > limit:  # only redaction made it longer
                redacted[name] = policy.whole_value_token(obj[name])
        obj = redacted
    if email is not None:
        # from here on the payload (digest, staging, conflicts) never holds the address itself
        if policy.email_key:
            obj["email"] = email_hmac(email, policy.email_key)
        else:
            out.emails_dropped += 1
    return obj


def _check_strings_as_sent(obj: dict, raw: bytes) -> None:
    """Length limits before redaction; control characters (only possible through escapes)."""
    for name, limit in LENGTH_LIMITS.items():
        value = obj.get(name)
        if isinstance(value, str):
            if len(value) > limit:
                raise Reject("invalid_field", f"{name} must be a string of 1..{limit} characters")
            bad = _CONTROL.search(value) is not None if name in IDENTIFIERS else "\x00" in value
            if bad:
                raise Reject("invalid_field", f"{name} must not contain control characters")


def _attributes(obj: dict, event_type: str) -> str | None:
    """Unknown fields as a JSON object (sorted keys), or None."""
    known = KNOWN[event_type]
    if len(obj) <= len(known) and known.issuperset(obj):
        return None
    extra = {k: v for k, v in obj.items() if k not in known}
    return orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode() if extra else None


def _accept(obj: dict, out: ParsedChunk, source_file: str, file_index: int, line_no: int) -> None:
    event_id = _string(obj, "event_id", True)
    event_type = obj.get("event_type")
    if event_type is None:
        raise Reject("missing_field", "event_type is required")
    if not isinstance(event_type, str) or event_type not in FIELDS:
        raise Reject("unknown_event_type", f"unknown event_type {str(event_type)[:60]!r}")
    occurred_at = obj.get("occurred_at")
    if occurred_at is None or occurred_at == "":
        raise Reject("missing_field", "occurred_at is required")
    occurred = parse_timestamp(occurred_at, "occurred_at")
    customer_id = _string(obj, "customer_id", True)
    attributes = _attributes(obj, event_type)
    digest = hashlib.sha256(canonical_json(obj)).hexdigest()
    occurred_us = _micros(occurred)
    if event_type == "usage.recorded":
        cols = out.usage
        row = (event_id, event_type, occurred_us, customer_id, _string(obj, "meter", True),
               _quantity(obj.get("quantity")), _string(obj, "subscription_id", False),
               attributes, digest, source_file, line_no)  # fmt: skip
        for name, value in zip(USAGE_COLUMNS, row, strict=True):
            cols[name].append(value)
    else:
        v = dict.fromkeys(EVENT_COLUMNS)
        v["event_id"], v["event_type"], v["customer_id"], v["occurred_at"] = event_id, event_type, customer_id, occurred_us
        _PAYMENT_FIELDS[event_type](obj, v)
        v["attributes"], v["payload_sha256"] = attributes, digest
        v["source_file"], v["source_line"] = source_file, line_no
        cols = out.events
        for name in EVENT_COLUMNS:
            cols[name].append(v[name])
    cols["event_date"].append(occurred.date())
    cols["file_index"].append(file_index)


# ------------------------------------------------- per event type: fill the event's columns in v


def _customer_created(obj: dict, v: dict) -> None:
    email = obj.get("email")
    if email is not None and not isinstance(email, str):
        raise Reject("invalid_field", "email must be a string")
    v["email_hmac"] = email  # already replaced by its keyed hash in _protect
    v["name"] = _string(obj, "name", False, MAX_NAME)
    country = _string(obj, "country", False, 2)
    if country is not None and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise Reject("invalid_field", f"country {country!r} is not an ISO 3166-1 alpha-2 code")
    v["country"] = country.upper() if country else None
    v["segment"] = _string(obj, "segment", False)


def _effective_at(obj: dict, v: dict) -> None:
    eff = obj.get("effective_at")
    v["effective_at"] = _micros(parse_timestamp(eff, "effective_at")) if eff is not None else v["occurred_at"]


def _subscription_state(obj: dict, v: dict) -> None:
    v["subscription_id"] = _string(obj, "subscription_id", True)
    v["plan_id"] = _string(obj, "plan_id", True)
    v["currency"], v["currency_exponent"] = _currency(obj)
    v["unit_amount"] = unit_amount = _int(obj, "unit_amount", True, *INT_BOUNDS["unit_amount"], money=True)
    v["quantity"] = quantity = _int(obj, "quantity", False, *INT_BOUNDS["quantity"]) or DEFAULT_QUANTITY
    interval = obj.get("interval", DEFAULT_INTERVAL)
    if not isinstance(interval, str) or interval not in INTERVALS:
        raise Reject("invalid_field", f"interval must be one of {', '.join(INTERVALS)}")
    v["interval"] = interval
    v["interval_count"] = _int(obj, "interval_count", False, *INT_BOUNDS["interval_count"]) or DEFAULT_INTERVAL_COUNT
    factor = _monthly_factor(interval, v["interval_count"])
    if unit_amount * quantity * factor.numerator > MAX_MRR_MINOR * factor.denominator:
        raise Reject("out_of_range", f"MRR of unit_amount {unit_amount} x quantity {quantity} per "
                     f"{v['interval_count']} {interval} exceeds the maximum {MAX_MRR_MINOR} minor units")  # fmt: skip
    if obj.get("trial_end") is not None:
        v["trial_end"] = _micros(parse_timestamp(obj["trial_end"], "trial_end"))
    _effective_at(obj, v)


def _subscription_canceled(obj: dict, v: dict) -> None:
    v["subscription_id"] = _string(obj, "subscription_id", True)
    _effective_at(obj, v)


def _invoice(obj: dict, v: dict) -> None:
    v["invoice_id"] = _string(obj, "invoice_id", True)
    v["currency"], v["currency_exponent"] = _currency(obj)
    v["amount"] = _int(obj, "amount", True, *INT_BOUNDS["amount"], money=True)


def _invoice_paid(obj: dict, v: dict) -> None:
    _invoice(obj, v)
    v["subscription_id"] = _string(obj, "subscription_id", False)
    v["tax"] = _int(obj, "tax", False, *INT_BOUNDS["tax"], money=True) or DEFAULT_TAX
    if v["tax"] > v["amount"]:
        raise Reject("invalid_field", f"tax {v['tax']} exceeds the invoice amount {v['amount']}")
    for name in ("period_start", "period_end"):
        if obj.get(name) is not None:
            v[name] = _micros(parse_timestamp(obj[name], name))


def _payment_failed(obj: dict, v: dict) -> None:
    _invoice(obj, v)
    v["subscription_id"] = _string(obj, "subscription_id", False)
    v["attempt"] = _int(obj, "attempt", False, *INT_BOUNDS["attempt"])


def _charge_refunded(obj: dict, v: dict) -> None:
    _invoice(obj, v)
    reason = obj.get("reason")
    if reason is not None and (not isinstance(reason, str) or "\x00" in reason):
        raise Reject("invalid_field", "reason must be a string without NUL characters")
    v["reason"] = reason


_PAYMENT_FIELDS = {
    "customer.created": _customer_created,
    "subscription.created": _subscription_state,
    "subscription.updated": _subscription_state,
    "subscription.canceled": _subscription_canceled,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _payment_failed,
    "charge.refunded": _charge_refunded,
}
assert set(_PAYMENT_FIELDS) | {"usage.recorded"} == set(FIELDS)
