"""Vectorised parsing of a chunk of event lines: the fast path in front of ``transforms.parse``.

``parse_chunk_lines`` gives exactly what ``parse.parse_lines`` gives for the same lines (row
for row, column for column), but decides most lines a chunk at a time:

1. **Eligibility (pyarrow, RE2 on the raw bytes).** A line can take the fast path only if it
   is a *flat* JSON object of printable ASCII: keys and string values without ``\\`` or ``"``
   inside, values that are such strings, ``true``/``false``, non-negative integers
   written canonically (``0`` or no leading zero) or, for usage quantities, short decimals
   (``497.16``: at most 3 decimals, the last one not 0, so the float orjson reads prints back
   as the same text), and no run of 13 card-class characters (``transforms.redact``'s
   pre-check, so nothing in it can need redaction), at most ``MAX_LINE_BYTES`` long. BOM,
   CR, escapes, nulls, negative numbers, exponents, nesting and non-ASCII all fall out here.
2. **Validation (DuckDB, one query).** Keys and values are cut out with DuckDB's JSON
   functions (``json_keys``, ``json_extract``), and one boolean expression per event type
   checks every contract rule: no duplicate key, only the type's known fields (no unknown
   fields: those need the attributes), no ``@`` outside an ``email`` value (so no other
   string holds an address: nothing to redact), required fields present, string lengths,
   integer bounds, currencies, intervals, the MRR bound, tax <= amount, and timestamps
   (``YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM)`` only, converted to UTC micros by DuckDB's
   ``timestamptz`` cast and checked against ``TS_MIN``..``TS_MAX``).
   The same query builds the output columns, defaults and the payload digest (SHA-256 of
   the canonical JSON: for such lines, the ``"key":value`` pairs with spaces removed,
   sorted by key, which is what ``orjson.dumps(obj, OPT_SORT_KEYS)`` writes). For the few
   lines with an ``email`` (stored only as its keyed hash, or dropped and counted), the query
   gives the canonical JSON with a placeholder and Python puts the hash in (or the field out)
   and takes the digest.
3. **Everything else** — any line that is not eligible, or fails any fast check, whatever
   the reason — goes through ``parse.parse_lines`` unchanged, which writes the dead letter,
   its reason and message, redacts, and accepts what the fast path could not prove.

The fast path never rejects: it accepts or defers. Its constants (bounds, event types,
fields, defaults, currencies, intervals and monthly factors, timestamp range) come from
``transforms.parse``, ``transforms.money`` and ``transforms.redact``.
``tests/transforms/test_parse_differential.py`` compares both paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from iso4217 import Currency

from transforms.errors import UnknownCurrency
from transforms.money import INTERVALS, currency_exponent, monthly_factor
from transforms.parse import (
    DEFAULT_INTERVAL,
    DEFAULT_INTERVAL_COUNT,
    DEFAULT_QUANTITY,
    DEFAULT_TAX,
    EVENT_COLUMNS,
    FIELDS,
    INT_BOUNDS,
    KNOWN,
    LENGTH_LIMITS,
    MAX_LINE_BYTES,
    MAX_MRR_MINOR,
    MAX_USAGE_QUANTITY,
    TS_MAX,
    TS_MIN,
    USAGE_COLUMNS,
    ParsedChunk,
    _micros,
    parse_lines,
)
from transforms.redact import _CARD_CLASS, MIN_CARD_DIGITS, PiiPolicy, as_policy, email_hmac
from transforms.schemas import PAYMENT_EVENT_TYPES, QUANTITY, USAGE_EVENT_TYPES

US_PER_DAY = 86_400_000_000
# stands for the email pair in a line's canonical JSON until Python knows it (never in a fast line: not printable)
EMAIL_PLACEHOLDER = '"email":"\x01"'
_PLACEHOLDER_SQL = """'"email":"' || chr(1) || '"'"""
QUERY_THREADS = max(1, min(4, os.cpu_count() or 1))
QUERY_BATCH_ROWS = 8_192  # rows per record batch DuckDB scans (its unit of parallel work on an Arrow table)
TIMESTAMP_FIELDS = ("occurred_at", "effective_at", "trial_end", "period_start", "period_end")
SUBSCRIPTION_STATE = ("subscription.created", "subscription.updated")

# ---------------------------------------------------------------- eligibility (RE2 over raw bytes)
# string content: printable ASCII without '"' and '\' (0x20-0x7e minus 0x22, 0x5c); an '@' is allowed only
# in the value of an email field (the query checks: no other string can hold an address)
_STR = r'"[ !#-\[\]-~]*"'
_DECIMAL_PLACES = 3  # usage quantities on the fast path: <= 3 decimals (QUANTITY.scale allows more)
assert _DECIMAL_PLACES <= QUANTITY.scale
_NUM = rf"(?:0|[1-9][0-9]*)(?:\.[0-9]{{0,{_DECIMAL_PLACES - 1}}}[1-9])?"
_VALUE = rf"(?:{_STR}|{_NUM}|true|false)"
_PAIR = rf"{_STR} *: *{_VALUE}"
FLAT_LINE = rf"^\{{ *{_PAIR}(?: *, *{_PAIR})* *\}}$"
# the card pre-check of transforms.redact.may_contain_card, as a regex over the same characters
_CARD_CHARS = bytes(b for b in range(1, 256) if _CARD_CLASS[b] == 0).decode("ascii")
CARD_CANDIDATE = f"[{re.escape(_CARD_CHARS)}]{{{MIN_CARD_DIGITS}}}"

# ---------------------------------------------------------------- validation (DuckDB)
_ALL_FIELDS = sorted(set().union(*KNOWN.values()))
_TS_PATTERN = (r'"(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])'
               r'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"')  # fmt: skip
assert TS_MIN.year >= 1970 and TS_MAX.year <= 2200  # the pattern's years cover the accepted range


def _sql_list(values) -> str:
    return "[" + ", ".join(_sql_str(v) for v in values) + "]"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _currency_rows() -> list[tuple[str, int]]:
    rows = []
    for currency in Currency:
        try:
            rows.append((currency.code, currency_exponent(currency.code)))
        except UnknownCurrency:
            continue
    return rows


def _interval_factors() -> dict[str, tuple[int, int]]:
    """interval -> (n, d) with monthly_factor(interval, c) == n / (d * c) (checked here for a few c)."""
    out = {}
    for interval in INTERVALS:
        base = monthly_factor(interval, 1)
        for count in (1, 2, 3, 7, 12, 10**9):
            assert monthly_factor(interval, count) == Fraction(base.numerator, base.denominator * count)
        out[interval] = (base.numerator, base.denominator)
    return out


_MACROS = rf"""
create or replace macro is_str(t) as starts_with(t, '"');
create or replace macro sval(t) as case when starts_with(t, '"') then substr(t, 2, length(t) - 2) end;
-- tokens are strings, canonical non-negative integers, short decimals or true/false (FLAT_LINE)
create or replace macro is_num(t) as t[1] between '0' and '9';
create or replace macro ival(t) as case when is_num(t) and not contains(t, '.') then t::bigint end;
create or replace macro at_count(t) as case when contains(t, '@') then length(t) - length(replace(t, '@', '')) else 0 end;
create or replace macro str_ok(t, lim) as t is null or (is_str(t) and length(t) - 2 between 1 and lim);
-- the pattern admits only valid RFC 3339 spellings of 1970..2199 (no leap second, no hour 24); DuckDB's
-- cast then gives the exact instant (NULL for a day the month lacks: Feb 30, Apr 31, Feb 29 of 2023)
create or replace macro ts_us(t) as case when regexp_full_match(t, '{_TS_PATTERN}') then
    epoch_us(try_cast(sval(t) as timestamptz)) end;
create or replace macro ts_range(us) as case when us >= {_micros(TS_MIN)} and us < {_micros(TS_MAX)} then us end;
"""


def _tok(name: str) -> str:
    """SQL: the column holding the raw JSON token of field ``name`` in the line (NULL if absent)."""
    return f"t_{name}"


def _us(name: str) -> str:
    """SQL: the column holding timestamp field ``name`` as UTC micros (NULL if absent or not fast-valid)."""
    return f"us_{name}"


def _interval_case(which: int) -> str:
    iv = f"coalesce(sval({_tok('interval')}), {_sql_str(DEFAULT_INTERVAL)})"
    return f"case {iv} " + " ".join(f"when {_sql_str(i)} then {nd[which]}" for i, nd in _FACTORS.items()) + " end"


def _type_rule(event_type: str) -> str:
    """The fast acceptance condition of one event type's own fields (SQL)."""
    required, optional = FIELDS[event_type]
    conds = [f"{_tok(name)} is not null" for name in required]
    for name in required + optional:
        t = _tok(name)
        if name == "email":
            conds.append(f"({t} is null or is_str({t}))")  # hashed or dropped in Python (_email_rows)
        elif name in TIMESTAMP_FIELDS:
            conds.append(f"({t} is null or {_us(name)} is not null)")
        elif name == "currency":
            conds.append("cur.exponent is not null")
        elif name == "interval":
            conds.append(f"({t} is null or sval({t}) in ({', '.join(map(_sql_str, INTERVALS))}))")
        elif name == "country":
            conds.append(f"({t} is null or regexp_full_match({t}, '\"[A-Za-z][A-Za-z]\"'))")
        elif name == "reason":
            conds.append(f"({t} is null or is_str({t}))")
        elif name == "quantity" and event_type in USAGE_EVENT_TYPES:
            conds.append(f"is_num({t}) and try_cast({t} as decimal(38, {QUANTITY.scale})) <= {MAX_USAGE_QUANTITY}")
        elif name in INT_BOUNDS:
            lo, hi = INT_BOUNDS[name]
            conds.append(f"({t} is null or coalesce(i_{name} between {lo} and {hi}, false))")
        elif name in LENGTH_LIMITS:
            conds.append(f"str_ok({t}, {LENGTH_LIMITS[name]})")
        else:
            raise AssertionError(f"no fast rule for {event_type}.{name}: add one, or defer it to the per-line path")
    if event_type in SUBSCRIPTION_STATE:
        conds.append(
            f"i_unit_amount::hugeint * coalesce(i_quantity, {DEFAULT_QUANTITY})"
            f" * {_interval_case(0)} <= {MAX_MRR_MINOR}::hugeint * {_interval_case(1)}"
            f" * coalesce(i_interval_count, {DEFAULT_INTERVAL_COUNT})"
        )
    if event_type == "invoice.paid":
        conds.append(f"coalesce(i_tax, {DEFAULT_TAX}) <= i_amount")
    return " and ".join(f"({c})" for c in conds)


_FACTORS = _interval_factors()


def _known_rule() -> str:
    """SQL: the line's event type is known, its keys are that type's fields, and its own rules hold.

    The line's keys are that type's fields, each once, exactly when their number equals the number of
    the type's fields present (a duplicate or an unknown key makes ``len(keys)`` larger).
    """

    def present(event_type: str) -> str:
        return " + ".join(f"({_tok(name)} is not null)::int" for name in sorted(KNOWN[event_type]))

    cases = " ".join(
        f"when {_sql_str(t)} then len(keys) = {present(t)} and {_type_rule(t)}"
        for t in FIELDS
    )
    return f"case event_type {cases} else false end"


def _column_exprs() -> dict[str, str]:
    """SQL for each output column of an accepted line (events and usage share the common ones)."""
    subs = ", ".join(map(_sql_str, SUBSCRIPTION_STATE))
    cols = {name: f"sval({_tok(name)})" for name in (*LENGTH_LIMITS, "reason")}
    cols.update({name: f"i_{name}" for name in ("unit_amount", "amount", "attempt")})
    cols.update({name: _us(name) for name in ("trial_end", "period_start", "period_end")})
    cols.update({
        "event_type": "event_type",
        "occurred_at": _us("occurred_at"),
        "currency": "cur.code",
        "currency_exponent": "cur.exponent",
        "quantity": f"case when event_type in ({subs}) then coalesce(i_quantity, {DEFAULT_QUANTITY}) end",
        "interval": f"case when event_type in ({subs}) then coalesce(sval({_tok('interval')}), {_sql_str(DEFAULT_INTERVAL)}) end",
        "interval_count": f"case when event_type in ({subs}) then coalesce(i_interval_count, "
                          f"{DEFAULT_INTERVAL_COUNT}) end",
        "effective_at": f"case when event_type in ({subs}, 'subscription.canceled') "
                        f"then coalesce({_us('effective_at')}, {_us('occurred_at')}) end",
        "tax": f"case when event_type = 'invoice.paid' then coalesce(i_tax, {DEFAULT_TAX}) end",
        "country": f"upper(sval({_tok('country')}))",
        "usage_quantity": f"case when is_num({_tok('quantity')}) then try_cast({_tok('quantity')} as decimal(38, {QUANTITY.scale})) end",
        # canonical JSON (orjson, sorted keys, no spaces): the line's keys are known field names, so
        # it is their '"key":token' pairs in sorted order (yyjson writes these tokens back as read)
        "payload_sha256": f"case when {_tok('email')} is null then sha256({_canonical()}) end",
        "email": f"sval({_tok('email')})",
        "canonical_email": f"case when {_tok('email')} is not null then {_canonical(_PLACEHOLDER_SQL)} end",
    })  # fmt: skip
    return cols


def _canonical(email: str | None = None) -> str:
    """SQL: the canonical JSON of a fast line; ``email``: the SQL text standing in for the email pair."""
    pairs = [f"'\"{name}\":' || {_tok(name)}" if name != "email" or email is None else email
             for name in _ALL_FIELDS]  # NULL for an absent field: skipped by concat_ws  # fmt: skip
    return "'{' || concat_ws(',', " + ", ".join(pairs) + ") || '}'"


def _query() -> str:
    cols = _column_exprs()
    common = (f"at_signs = coalesce(at_count({_tok('email')}), 0)"
              f" and str_ok({_tok('event_id')}, {LENGTH_LIMITS['event_id']})"
              f" and {_tok('event_id')} is not null and {_tok('customer_id')} is not null"
              f" and str_ok({_tok('customer_id')}, {LENGTH_LIMITS['customer_id']}) and {_us('occurred_at')} is not null")  # fmt: skip
    select = ",\n  ".join(f"{expr} as {name}" for name, expr in cols.items())
    # as VARCHAR: on the JSON type, t[1] would be an array index, not the first character
    tokens = ", ".join(f"toks[{k}]::varchar as {_tok(name)}" for k, name in enumerate(_ALL_FIELDS, start=1))
    ints = ", ".join(f"ival({_tok(name)}) as i_{name}" for name in INT_BOUNDS)
    micros = ", ".join(f"ts_us({_tok(name)}) as c_{name}" for name in TIMESTAMP_FIELDS)
    ranged = ", ".join(f"ts_range(c_{name}) as {_us(name)}" for name in TIMESTAMP_FIELDS)
    return f"""
with t as (
  select i, json_keys(line) as keys, json_extract(line, {_sql_list('$.' + name for name in _ALL_FIELDS)}) as toks,
    at_count(line) as at_signs
  from lines
), u as (
  select i, keys, at_signs, {tokens} from t
), c as (
  select *, sval({_tok('event_type')}) as event_type, {ints}, {micros} from u
), v as (
  select *, {ranged} from c
)
select i, coalesce({common} and {_known_rule()}, false) as ok,
  {select}
from v left join currencies as cur on cur.code = upper(sval({_tok('currency')}))
"""


_QUERY = _query()
_local = threading.local()


def connection(threads: int = QUERY_THREADS) -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection with the macros and the currency table (created once, with
    ``threads`` DuckDB threads: a caller running queries on several threads of its own gives fewer)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect()
        # the chunk is registered as several record batches, which DuckDB scans in parallel
        con.execute(f"set threads = {threads}")
        con.execute(_MACROS)
        con.execute("create table currencies (code varchar primary key, exponent tinyint)")
        rows = _currency_rows()  # one statement (executemany runs one per row: ~0.1 s per connection)
        con.execute("insert into currencies values " + ", ".join(["(?, ?)"] * len(rows)),
                    [value for row in rows for value in row])  # fmt: skip
        _local.con = con
    return con


def eligible(lines: pa.Array) -> np.ndarray:
    """Positions of the lines that may take the fast path (see the module docstring, step 1)."""
    mask = pc.and_(
        pc.and_(pc.match_substring_regex(lines, FLAT_LINE), pc.invert(pc.match_substring_regex(lines, CARD_CANDIDATE))),
        pc.less_equal(pc.binary_length(lines), MAX_LINE_BYTES),
    )
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def parse_chunk_lines(lines, source_file: str, file_index: int, first_line_no: int, pii: PiiPolicy | bytes | None,
                      events_schema: pa.Schema, usage_schema: pa.Schema):  # fmt: skip
    """Parse a chunk: returns ``(fast events, fast usage, slow ParsedChunk)``; the caller merges them by line.

    The fast tables hold the lines the vectorised path accepted (``events_schema``/``usage_schema``:
    the staging schemas); the ``ParsedChunk`` holds what ``parse_lines`` made of all the others
    and counts every line of the chunk.
    """
    return parse_chunks_lines([(lines, source_file, file_index, first_line_no)], pii, events_schema, usage_schema)[0]


def parse_chunks_lines(chunks, pii: PiiPolicy | bytes | None, events_schema: pa.Schema, usage_schema: pa.Schema):
    """``parse_chunk_lines`` of several chunks (``(lines, source_file, file_index, first_line_no)`` each) with
    one DuckDB query for all of them: planning the query costs ~40 ms whatever the number of lines, as much
    as ~6,000 lines of work, so small chunks (files of a few thousand lines) are gathered. One result per
    chunk, each exactly what ``parse_chunk_lines`` gives for that chunk alone.

    In two steps, which a caller may run on different threads (``transforms.ingest._ParseFn`` queries
    the next batch while it finishes this one): ``query_chunks`` (Arrow and DuckDB: releases the GIL)
    and ``finish_chunks`` (the per-line path and the staging tables: mostly Python).
    """
    return finish_chunks(chunks, query_chunks(chunks), pii, events_schema, usage_schema)


@dataclass(frozen=True)
class QueriedChunks:
    """What the vectorised query decided for a batch of chunks: ``starts`` (each chunk's first position in
    the batch, and the end), ``accepted`` (per line) and ``fast`` (the accepted lines' query rows by ``i``)."""

    starts: np.ndarray
    accepted: np.ndarray
    fast: pa.Table | None


def query_chunks(chunks, con: duckdb.DuckDBPyConnection | None = None) -> QueriedChunks:
    """Step 1 of ``parse_chunks_lines``: eligibility and the DuckDB query (``con``: default, this thread's)."""
    starts = np.cumsum([0] + [len(c[0]) for c in chunks])
    # large_binary: the lines of a batch may pass 2 GiB (each line is at most MAX_LINE_BYTES)
    arrays = [c[0].cast(pa.large_binary()) if isinstance(c[0], pa.Array) else pa.array(list(c[0]), pa.large_binary())
              for c in chunks]  # fmt: skip
    raw = pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_binary())
    del arrays
    fast_pos = eligible(raw)
    accepted = np.zeros(len(raw), dtype=bool)
    fast = None
    if len(fast_pos):
        table = pa.table({"i": pa.array(fast_pos, pa.int64()),
                          "line": raw.take(pa.array(fast_pos)).cast(pa.large_string())})  # fmt: skip
        del raw
        con = con or connection()
        con.register("lines", pa.Table.from_batches(table.to_batches(max_chunksize=QUERY_BATCH_ROWS)))
        try:
            result = con.sql(_QUERY).to_arrow_table()
        finally:
            con.unregister("lines")
        del table
        # line order (the join need not keep it: a connection of one thread does); take on one chunk:
        # ~7x faster than on DuckDB's chunks
        fast = result.filter(result["ok"]).combine_chunks()
        del result
        rows = fast["i"].to_numpy()
        if not np.all(rows[1:] > rows[:-1]):
            fast = fast.take(pc.sort_indices(fast["i"]))
            rows = fast["i"].to_numpy()
        accepted[rows] = True
    return QueriedChunks(starts, accepted, fast)


def finish_chunks(chunks, queried: QueriedChunks, pii: PiiPolicy | bytes | None, events_schema: pa.Schema,
                  usage_schema: pa.Schema):  # fmt: skip
    """Step 2 of ``parse_chunks_lines``: one ``(fast events, fast usage, slow ParsedChunk)`` per chunk."""
    policy = as_policy(pii)
    starts, accepted, fast = queried.starts, queried.accepted, queried.fast
    bounds = np.searchsorted(fast["i"].to_numpy(), starts) if fast is not None else np.zeros(len(starts), dtype=int)
    return [
        _chunk_result(lines, source_file, file_index, first_line_no, policy, accepted[starts[k]:starts[k + 1]],
                      None if fast is None else fast.slice(bounds[k], bounds[k + 1] - bounds[k]),
                      int(starts[k]), events_schema, usage_schema)
        for k, (lines, source_file, file_index, first_line_no) in enumerate(chunks)
    ]  # fmt: skip


def _chunk_result(lines, source_file: str, file_index: int, first_line_no: int, policy: PiiPolicy,
                  accepted: np.ndarray, fast: pa.Table | None, start: int, events_schema: pa.Schema,
                  usage_schema: pa.Schema):  # fmt: skip
    """One chunk's fast rows (``fast``: its lines' query rows, ``i`` counted from ``start``) and its slow lines."""
    out = ParsedChunk()
    slow_pos = np.flatnonzero(~accepted)
    slow = lines.take(pa.array(slow_pos)).to_pylist() if isinstance(lines, pa.Array) else [lines[k] for k in slow_pos]
    parse_lines(slow, source_file, file_index, first_line_no, policy, out,
                line_numbers=(slow_pos + first_line_no).tolist())  # fmt: skip
    out.lines = len(lines)
    if fast is None or not fast.num_rows:
        return events_schema.empty_table(), usage_schema.empty_table(), out
    fast = _email_rows(fast, policy, out)
    redacted_file = policy.redact_path(source_file)
    is_usage = pc.is_in(fast["event_type"], value_set=pa.array(USAGE_EVENT_TYPES))
    tables = []
    for schema, mask, columns in ((events_schema, pc.invert(is_usage), EVENT_COLUMNS),
                                  (usage_schema, is_usage, USAGE_COLUMNS)):  # fmt: skip
        rows = fast.select(_query_columns(columns)).filter(mask)  # only the columns the table takes
        tables.append(_staging_table(rows, schema, columns, redacted_file, file_index, first_line_no - start))
    assert set(PAYMENT_EVENT_TYPES) | set(USAGE_EVENT_TYPES) == set(FIELDS)
    return tables[0], tables[1], out


def _email_rows(fast: pa.Table, policy: PiiPolicy, out: ParsedChunk) -> pa.Table:
    """Rows of lines with an ``email``: its keyed hash (``email_hmac``), or no email at all (counted in
    ``out.emails_dropped``), in the row and in the digest of its canonical JSON, as ``parse._protect`` does."""
    emails = fast["email"].combine_chunks()
    n = fast.num_rows
    pos = np.flatnonzero(pc.is_valid(emails).to_numpy(zero_copy_only=False))
    hashes = np.full(n, None, dtype=object)
    if not len(pos):
        return fast.append_column("email_hmac", pa.array(hashes, pa.string()))
    canonical = fast["canonical_email"].combine_chunks().take(pa.array(pos)).to_pylist()
    if policy.email_key:
        hashed = [email_hmac(email, policy.email_key) for email in emails.take(pa.array(pos)).to_pylist()]
        canonical = [c.replace(EMAIL_PLACEHOLDER, f'"email":"{h}"') for c, h in zip(canonical, hashed, strict=True)]
        hashes[pos] = hashed
    else:  # dropped: the pair goes (customer_id, required, always comes before it in key order)
        assert all(("," + EMAIL_PLACEHOLDER) in c for c in canonical)
        canonical = [c.replace("," + EMAIL_PLACEHOLDER, "") for c in canonical]
        out.emails_dropped += len(pos)
    digests = fast["payload_sha256"].combine_chunks().to_numpy(zero_copy_only=False).astype(object)
    digests[pos] = [hashlib.sha256(c.encode()).hexdigest() for c in canonical]
    index = fast.schema.get_field_index("payload_sha256")
    fast = fast.set_column(index, "payload_sha256", pa.array(digests, pa.string()))
    return fast.append_column("email_hmac", pa.array(hashes, pa.string()))


def _query_columns(columns) -> list[str]:
    """The query's columns ``_staging_table`` reads to build a table of ``columns``."""
    out = ["i", "occurred_at"]
    for name in columns:
        if name == "quantity" and "meter" in columns:
            out.append("usage_quantity")
        elif name not in ("source_file", "source_line", "attributes", "occurred_at"):
            out.append(name)
    return out


def _staging_table(rows: pa.Table, schema: pa.Schema, columns, source_file: str, file_index: int,
                   line_offset: int) -> pa.Table:  # fmt: skip
    """``rows`` (query rows) as a staging table; a row's line number is its ``i`` + ``line_offset``."""
    n = rows.num_rows
    occurred = rows["occurred_at"].combine_chunks()
    arrays = {}
    for name in columns:
        if name == "source_file":
            arrays[name] = pa.array([source_file] * n, pa.string())
        elif name == "source_line":
            arrays[name] = pc.add(rows["i"].combine_chunks(), line_offset)
        elif name == "quantity" and "meter" in columns:
            arrays[name] = rows["usage_quantity"].combine_chunks()
        elif name == "attributes":
            arrays[name] = pa.nulls(n, pa.string())
        else:
            arrays[name] = rows[name].combine_chunks()
    days = occurred.to_numpy(zero_copy_only=False) // US_PER_DAY  # UTC day (occurred_at >= TS_MIN >= 0)
    arrays["event_date"] = pa.array(days.astype(np.int32)).cast(pa.date32())
    arrays["file_index"] = pa.array(np.full(n, file_index, dtype=np.int64))
    return pa.table([arrays[f.name].cast(f.type) for f in schema], schema=schema)
