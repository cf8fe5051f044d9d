"""PII handling, defined once: card numbers and email addresses never reach storage.

Policy (CONTRACT section 1: card numbers are never written; an email only as a keyed hash):

* **One pass sees every string.** ``redact_text`` (``PiiPolicy.redact``) is applied to
  every string of an event, object keys included, at any depth (``redact_value``, an
  iterative walk), to numbers (a card pasted as a number is checked as the digits it is
  written with), to the raw text and message of a dead letter (JSON ``\\uXXXX`` escapes
  are decoded for the scan) and to input file names (``redact_path``). Parsing rejects
  lines nested deeper than ``transforms.parse.MAX_DEPTH`` before this pass.
* **Card numbers.** A *digit run* is 13 or more digits, each pair separated by at most
  ``MAX_SEPARATOR_RUN`` of the separators people type (whitespace, dash, dot):
  ``4111 1111 1111 1111``, ``4111  1111 ...``, ``4111.1111 ...``, ``4111-1111 ...``. A run
  is redacted as a whole when any window of 13 to 19 consecutive digits in it, not
  starting with 0 (no card does), passes the Luhn check, so a card preceded or followed
  by other digits (``994111111111111111``) is caught; a run of more than
  ``MAX_SCANNED_DIGITS`` digits is redacted without looking. Unicode decimal digits
  count. False positives (a long numeric id that happens to hold a Luhn-valid window)
  are redacted too; with a key their identity is kept, so that costs readability only.
* **Email addresses.** A run of address characters with an ``@`` after at least one of
  them (``EMAIL_PATTERN``: ``a@b.com``, also ``a@b``, ``x@y.com+@z.com``) is redacted whole.
* **Keyed tokens keep identity.** With a redaction key, a redacted part becomes
  ``[card:<16 letters>]`` / ``[email:<16 letters>]``: HMAC-SHA256 (redaction key) of the
  normalised value (card: its digits; email: lower case), first 64 bits, written with the
  letters ``a``-``p`` instead of hex digits, so a token never contains a digit or an ``@``
  and redacting twice changes nothing. ``evt_<card1>`` and ``evt_<card2>`` stay two
  events; the same card typed with other separators gives the same token; the same key
  gives the same tokens run after run (so re-ingesting is still a duplicate). Without the
  key a token cannot be reversed (a plain hash of a card number could be brute-forced).
* **Bounded fields.** Identifiers (``event_id``, ``customer_id``, ...), ``name`` and
  ``segment`` are checked against their length limit as sent. If redaction makes a valid
  one longer than its limit, the whole value becomes one token ``[redacted:<32 letters>]``
  (keyed hash of the original, 128 bits): redaction never turns a valid id into a rejected one.
* **The customer's email field** (``customer.created``) is stored only as
  ``email_hmac(email, email_key)`` (full HMAC-SHA256 hex of the trimmed, lower-cased
  address) when the user set ``REVENUE_PII_KEY``, and dropped (counted) otherwise.
* **Without a redaction key** (``PiiPolicy(None, ...)``, or the legacy ``pii_key=None``)
  redacted parts become the fixed masks ``[REDACTED-CARD]`` / ``[REDACTED-EMAIL]``: nothing
  leaks, but two ids differing only in a card number collide. Pipelines always pass a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

CARD_MASK = "[REDACTED-CARD]"
EMAIL_MASK = "[REDACTED-EMAIL]"
MIN_CARD_DIGITS = 13
MAX_CARD_DIGITS = 19
MAX_SEPARATOR_RUN = 3  # "4111 - 1111" still joins; longer gaps separate two numbers
MAX_SCANNED_DIGITS = 64  # a longer digit run is redacted without looking for a card in it
TOKEN_LETTERS = 16  # 64 bits of HMAC in a card/email token
ID_TOKEN_LETTERS = 32  # 128 bits when a whole over-long field is replaced

_SEP = r"[\s.\-]"
_CARD = re.compile(rf"(?<!\d)\d(?:{_SEP}{{0,{MAX_SEPARATOR_RUN}}}\d){{{MIN_CARD_DIGITS - 1},}}")
_NOT_DIGIT = re.compile(r"\D+")
_DIGIT = re.compile(r"\d")
# Cheap pre-check on raw bytes: 13 consecutive digits/separators, a superset of what _CARD
# matches, found with translate + find (several times faster than a regex search).
_CARD_CLASS = bytes.maketrans(b"0123456789 .-", b"\x00" * 13)
_CARD_CANDIDATE = b"\x00" * MIN_CARD_DIGITS
_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~\-]"
# A whole run of address characters holding an @ after at least one of them: "a@b.com",
# but also "x@y.com+@z.com" (no address-like residue is left beside a token). The
# look-behind makes only the start of a run try to match (no quadratic rescans).
EMAIL_PATTERN = rf"(?<!{_LOCAL}){_LOCAL}+@(?:{_LOCAL}|@)*"
_EMAIL = re.compile(EMAIL_PATTERN)
_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_PATH_SUFFIX = re.compile(r"(\.jsonl(?:\.gz)?)$", re.IGNORECASE)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def holds_card(digits: str) -> bool:
    """True if some window of 13..19 consecutive digits of ``digits`` (ASCII) could be a card number:
    it passes Luhn and does not start with 0 (no card does; 0000000000000 passes Luhn)."""
    n = len(digits)
    if n > MAX_SCANNED_DIGITS:
        return True
    if n <= MAX_CARD_DIGITS and digits[0] != "0" and luhn_valid(digits):
        return True
    # Luhn sum of every window from two prefix sums: in a window ending at e - 1, the
    # digits doubled are those at positions k with k % 2 == e % 2.
    sums = ([0], [0])
    for k, ch in enumerate(digits):
        d = ord(ch) - 48
        doubled = d * 2 - 9 if d > 4 else d * 2
        sums[0].append(sums[0][-1] + (doubled if k % 2 == 0 else d))
        sums[1].append(sums[1][-1] + (doubled if k % 2 == 1 else d))
    for end in range(MIN_CARD_DIGITS, n + 1):
        prefix = sums[end % 2]
        for start in range(max(0, end - MAX_CARD_DIGITS), end - MIN_CARD_DIGITS + 1):
            if (prefix[end] - prefix[start]) % 10 == 0 and digits[start] != "0":
                return True
    return False


def _ascii_digits(text: str) -> str:
    digits = _NOT_DIGIT.sub("", text)
    return digits if digits.isascii() else "".join(str(int(ch)) for ch in digits)


def _token(key: bytes, kind: str, value: str, letters: int = TOKEN_LETTERS) -> str:
    digest = hmac.new(key, f"{kind}:{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"[{kind}:{digest[:letters].translate(_HEX_TO_LETTERS)}]"


def redact_text(text: str, key: bytes | None = None) -> str:
    """Redact card numbers and email addresses in one string (keyed tokens, or fixed masks without a key)."""
    if len(text) >= MIN_CARD_DIGITS and _DIGIT.search(text):

        def card(match: re.Match) -> str:
            digits = _ascii_digits(match.group(0))
            if not holds_card(digits):
                return match.group(0)
            return _token(key, "card", digits) if key else CARD_MASK

        text = _CARD.sub(card, text)
    if "@" in text:
        text = _EMAIL.sub(lambda m: _token(key, "email", m.group(0).lower()) if key else EMAIL_MASK, text)
    return text


def _redact_number(value, key: bytes | None):
    """A number is checked as the digits it is written with; a card becomes its token (a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -(10**12) < value < 10**12:
            return value
        text = str(value)
    else:
        text = repr(value)
        if sum(ch.isdigit() for ch in text) < MIN_CARD_DIGITS:
            return value
    redacted = redact_text(text, key)
    return value if redacted == text else redacted


def redact_value(value, key: bytes | None = None):
    """A redacted copy of a parsed JSON value: every string (object keys included) and number.

    Iterative, so any depth is safe.
    """
    if isinstance(value, str):
        return redact_text(value, key)
    if not isinstance(value, dict | list):
        return _redact_number(value, key) if isinstance(value, int | float) else value
    root = {} if isinstance(value, dict) else []
    stack = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for name, item in items:
            if isinstance(item, str):
                item = redact_text(item, key)
            elif isinstance(item, dict | list):
                child = {} if isinstance(item, dict) else []
                stack.append((item, child))
                item = child
            elif isinstance(item, int | float):
                item = _redact_number(item, key)
            if isinstance(target, dict):
                target[redact_text(name, key)] = item
            else:
                target.append(item)
    return root


def redact_emails(text: str) -> str:
    """Mask email addresses in free text with the fixed mask (kept for existing callers)."""
    return _EMAIL.sub(EMAIL_MASK, text) if "@" in text else text


def redact_path(text: str, key: bytes | None) -> str:
    """Redact an input file path or name; each component keeps its ``.jsonl``/``.jsonl.gz`` suffix."""
    if not (_DIGIT.search(text) or "@" in text):
        return text
    parts = []
    for part in text.split("/"):
        suffix = _PATH_SUFFIX.search(part)
        stem = part[: suffix.start()] if suffix else part
        parts.append(redact_text(stem, key) + (suffix.group(1) if suffix else ""))
    return "/".join(parts)


def unescape_json_text(text: str) -> str:
    """Turn ``\\uXXXX`` escapes of printable characters back into the character.

    Raw JSON text is scanned before it is stored in a dead letter; an escaped digit or
    ``@`` would otherwise hide a card number or an address from the scan.
    """
    if "\\u" not in text:
        return text

    def unescape(match: re.Match) -> str:
        ch = chr(int(match.group(1), 16))
        if ch in '"\\' or not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF:
            return match.group(0)
        return ch

    return _JSON_ESCAPE.sub(unescape, text)


def may_contain_card(raw: bytes) -> bool:
    """Cheap test on a raw line: False means no string or number in it can hold a card number."""
    return b"\\" in raw or not raw.isascii() or _CARD_CANDIDATE in raw.translate(_CARD_CLASS)


def email_hmac(email: str, key: bytes) -> str:
    """Keyed hash of a normalised email (trimmed, lower case), hex."""
    return hmac.new(key, email.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PiiPolicy:
    """How parsing treats personal data.

    ``redaction_key``: secret for the keyed tokens that replace card numbers and email
    addresses anywhere (``REVENUE_PII_KEY``, or a per-data-dir random secret the
    pipeline keeps). ``None`` only for legacy callers: fixed masks, identity lost.
    ``email_key``: set when the user chose to keep customers' emails as keyed hashes
    (``REVENUE_PII_KEY``); ``None`` drops the ``email`` field.
    """

    redaction_key: bytes | None
    email_key: bytes | None = None

    def __post_init__(self):
        for name in ("redaction_key", "email_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or not value):
                raise ValueError(f"PiiPolicy.{name} must be non-empty bytes or None")

    def __repr__(self) -> str:  # never print the secrets
        return f"PiiPolicy(redaction_key={'set' if self.redaction_key else None}, email_key={'set' if self.email_key else None})"

    def redact(self, text: str) -> str:
        return redact_text(text, self.redaction_key)

    def redact_value(self, value):
        return redact_value(value, self.redaction_key)

    def redact_path(self, text: str) -> str:
        return redact_path(text, self.redaction_key)

    def redact_raw(self, text: str) -> str:
        """Raw line text for a dead letter."""
        return redact_text(unescape_json_text(text), self.redaction_key)

    def whole_value_token(self, value: str) -> str:
        """One token for a whole value (an id that redaction would make too long)."""
        if not self.redaction_key:
            return CARD_MASK
        return _token(self.redaction_key, "redacted", value, ID_TOKEN_LETTERS)


def as_policy(pii: PiiPolicy | bytes | None) -> PiiPolicy:
    """Accept the legacy ``pii_key: bytes | None`` argument: bytes keys both, None masks and drops emails."""
    if isinstance(pii, PiiPolicy):
        return pii
    if pii is None:
        return PiiPolicy(None, None)
    return PiiPolicy(bytes(pii), bytes(pii))
