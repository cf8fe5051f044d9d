"""The redaction policy (transforms.redact): one pass, keyed tokens, file names, the policy object."""

import pytest

from transforms.redact import (
    CARD_MASK,
    EMAIL_MASK,
    PiiPolicy,
    as_policy,
    redact_path,
    redact_text,
    redact_value,
    unescape_json_text,
)

KEY = b"k"


@pytest.mark.parametrize("spelling", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
                                      "4111.1111.1111.1111", "4111  1111  1111  1111", "4111 - 1111 - 1111 - 1111",
                                      "994111111111111111", "41111111111111117", "３７８２８２２４６３１０００５"])  # fmt: skip
def test_card_spellings_are_redacted(spelling):
    out = redact_text(f"paid with {spelling} today", KEY)
    assert out.startswith("paid with [card:") and out.endswith("] today")
    assert not any(ch.isdigit() for ch in out)


def test_tokens_keep_identity_and_hide_the_value():
    a, b = redact_text("4111111111111111", KEY), redact_text("5500000000000004", KEY)
    assert a != b and a == redact_text("4111 1111 1111 1111", KEY)
    assert redact_text(a, KEY) == a  # idempotent: a token has no digits and no @
    assert redact_text("4111111111111111", b"other") != a
    assert redact_text("x@y.com", KEY) == redact_text("X@Y.COM", KEY) != redact_text("z@y.com", KEY)
    assert redact_text("4111111111111111 x@y.com") == f"{CARD_MASK} {EMAIL_MASK}"  # no key: fixed masks


def test_not_cards_are_kept():
    for text in ("order 4111111111111113", "1000000000000000", "2024-03-01T10:00:00Z", "+1 415 555 0100",
                 "192.168.100.200", "version 1.2.3"):  # fmt: skip
        assert redact_text(text, KEY) == text


def test_redact_value_sees_keys_numbers_and_any_depth():
    deep: dict = {}
    node = deep
    for _ in range(5000):  # iterative: no RecursionError
        node["k"] = {}
        node = node["k"]
    node["4111 1111 1111 1111"] = ["a@b.com", 4111111111111111, 4.111111111111111e15, 7]
    out = redact_value({"x": deep}, KEY)
    node = out["x"]
    for _ in range(5000):
        node = node["k"]
    ((key, value),) = node.items()
    assert key.startswith("[card:") and value[0].startswith("[email:")
    assert value[1].startswith("[card:") and value[2].startswith("[card:") and value[3] == 7
    assert deep["k"] is not out["x"]["k"]  # a copy; the input is not changed


def test_redact_path_keeps_the_suffix():
    path = "in/4111 1111 1111 1111/bob@example.com.jsonl.gz"
    out = redact_path(path, KEY)
    assert out.startswith("in/[card:") and out.endswith("].jsonl.gz") and "@" not in out
    assert redact_path("batch-01/events-0001.jsonl", KEY) == "batch-01/events-0001.jsonl"
    assert redact_path(out, KEY) == out


def test_escaped_json_text_is_scanned():
    escaped = "".join(f"\\u{ord(c):04x}" for c in "4111111111111111")
    assert unescape_json_text(f'"{escaped}"') == '"4111111111111111"'
    assert unescape_json_text('"\\u0022\\u005c\\ud800"') == '"\\u0022\\u005c\\ud800"'  # quote, backslash, surrogate
    assert "[card:" in PiiPolicy(KEY).redact_raw(f'{{"x": "{escaped}"}}')


def test_policy_object():
    policy = PiiPolicy(redaction_key=b"secret-1", email_key=b"secret-2")
    assert "secret" not in repr(policy)
    with pytest.raises(ValueError):
        PiiPolicy(redaction_key=b"")
    with pytest.raises(ValueError):
        PiiPolicy(redaction_key="text-not-bytes")  # type: ignore[arg-type]
    assert as_policy(policy) is policy
    assert as_policy(b"legacy") == PiiPolicy(b"legacy", b"legacy")
    assert as_policy(None) == PiiPolicy(None, None)


def test_whitespace_of_any_kind_separates_groups():
    for spelling in ("4111\n1111\n1111\n1111", "4111\t1111\t1111\t1111", "4111\u00a01111\u00a01111\u00a01111"):
        assert redact_text(spelling, KEY) == redact_text("4111111111111111", KEY)
