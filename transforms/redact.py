"""PII handling, defined once: card numbers are redacted, emails become keyed hashes.

A card number is 13 to 19 digits, optionally separated by single spaces or dashes,
that passes the Luhn check. It is replaced wherever it appears in a string (known
fields, unknown attributes, the raw text of a dead letter), before anything is
written or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re

CARD_MASK = "[REDACTED-CARD]"
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# Cheap pre-check on raw bytes: a run of 13+ digits/separators. Most lines fail it.
_CARD_CANDIDATE = re.compile(rb"\d[\d -]{11,}\d")


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


def _replace(match: re.Match) -> str:
    text = match.group(0)
    if luhn_valid(text.replace(" ", "").replace("-", "")):
        return CARD_MASK
    # A longer run may hide a card among other digit groups ("ref 12 4111 1111 1111 1111"):
    # try every span of whole groups holding 13..19 digits. A plain digit run is one group.
    groups = re.split(r"([ -])", text)
    digits = groups[0::2]
    for first in range(len(digits)):
        total = 0
        for last in range(first, len(digits)):
            total += len(digits[last])
            if total > 19:
                break
            if total >= 13 and luhn_valid("".join(digits[first : last + 1])):
                head = "".join(groups[: 2 * first])
                tail = "".join(groups[2 * last + 1 :])
                return head + CARD_MASK + _redact_str(tail)
    return text


def _redact_str(text: str) -> str:
    return _CARD.sub(_replace, text)


def may_contain_card(raw: bytes) -> bool:
    return _CARD_CANDIDATE.search(raw) is not None


def redact_text(text: str) -> str:
    """Mask every Luhn-valid card number in free text."""
    if not any(ch.isdigit() for ch in text):
        return text
    return _redact_str(text)


def redact_value(value):
    """Recursively mask card numbers in a parsed JSON value.

    Integers of 13-19 digits that pass Luhn are masked too (a card pasted as a number).
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if 10**12 <= abs(value) < 10**19 and luhn_valid(str(abs(value))):
            return CARD_MASK
        return value
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
EMAIL_MASK = "[REDACTED-EMAIL]"


def redact_emails(text: str) -> str:
    """Mask email addresses in free text (dead-letter raw lines)."""
    return _EMAIL.sub(EMAIL_MASK, text) if "@" in text else text


def email_hmac(email: str, key: bytes) -> str:
    """Keyed hash of a normalised email (trimmed, lower case), hex."""
    return hmac.new(key, email.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()
