"""Hostile input end to end (`revenue run` in a subprocess): the committed hostile corpus and planted
personal data go through the whole pipeline; every line is accounted for, runs succeed, nothing
personal is on disk or on the terminal, exports hold no live formula, chart labels no link."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import EMAIL_LIKE as EMAIL_RE
from conftest import REPO, SAMPLE, pii_in

pytestmark = pytest.mark.slow

VISA, AMEX, MC = "4111111111111111", "378282246310005", "5555555555554444"
EMAIL = "Jane.Doe+billing@example.co.uk"
EVIL_METER = '<a href="https://evil.example/phish">api_calls</a>'
FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3"]
DAY = "2025-12-15T10:00:00Z"  # in the sample's as-of month, so the report shows these rows


def _corpus() -> list[tuple[str, bytes, str]]:
    sys.path.insert(0, str(REPO / "tests" / "transforms"))
    try:
        from test_hostile_input import CORPUS
    finally:
        sys.path.pop(0)
    return [c for c in CORPUS if b"\n" not in c[1]]


def _sub(customer: str, n: int, **extra) -> dict:
    return {"event_id": f"pii_sub_{n}", "event_type": "subscription.created", "occurred_at": DAY, "customer_id": customer,
            "subscription_id": f"s_{n}", "plan_id": "pro", "currency": "USD", "unit_amount": 5000, **extra}


def planted() -> list[str]:
    """Cards and emails in every place a tester found them, plus formula-like ids and a link as meter."""
    spaced, dotted, dashed = "4111  1111  1111  1111", "5555.5555.5555.4444", "3782-822463-10005"
    rows = [
        _sub(f"cus_{EMAIL}", 1),
        _sub("cus_keys", 2, **{VISA: "top-level card key", "attrs": {f"note {spaced}": {"deep": f"99{VISA}"}}}),
        {**_sub("cus_sep", 3), "plan_id": f"plan {dotted}", "coupon": f"paid with {dashed} by {EMAIL}"},
        {"event_id": f"evt_{VISA}", "event_type": "invoice.paid", "occurred_at": DAY, "customer_id": "cus_keys",
         "invoice_id": "in_a", "currency": "USD", "amount": 100},
        {"event_id": f"evt_{MC}", "event_type": "invoice.paid", "occurred_at": DAY, "customer_id": "cus_keys",
         "invoice_id": "in_b", "currency": "USD", "amount": 200},
        {"event_id": "cc_1", "event_type": "customer.created", "occurred_at": DAY, "customer_id": "cus_keys",
         "email": EMAIL, "name": f"Jane {EMAIL}", "segment": f"seg {AMEX}"},
        {"event_id": "bad_ts", "event_type": "invoice.paid", "occurred_at": f"{EMAIL} {VISA}", "customer_id": "c",
         "invoice_id": "i", "currency": "USD", "amount": 1},
        {"event_id": "bad_type", "event_type": f"mail {EMAIL} card {VISA}", "occurred_at": DAY, "customer_id": "c"},
        {"event_id": "u_evil", "event_type": "usage.recorded", "occurred_at": DAY, "customer_id": "cus_keys",
         "meter": EVIL_METER, "quantity": 7},
        {"event_id": "u_mail", "event_type": "usage.recorded", "occurred_at": DAY, "customer_id": "cus_keys",
         "meter": f"meter {EMAIL} {VISA}", "quantity": 3},
    ]
    rows += [_sub(f, 10 + i) for i, f in enumerate(FORMULAS)]
    return [json.dumps(r) for r in rows]


def cli(*args):
    # the default a user gets: no REVENUE_PII_KEY, so the data dir's own secret keys the tokens
    env = {k: v for k, v in os.environ.items() if k != "REVENUE_PII_KEY"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    events = base / "in"
    shutil.copytree(SAMPLE / "events", events)
    corpus = _corpus()
    (events / "hostile.jsonl").write_bytes(b"\n".join(raw for _, raw, _ in corpus) + b"\n")
    (events / f"export {VISA} for {EMAIL}.jsonl").write_text("\n".join(planted()) + "\n")
    data = base / "data"
    first = cli("run", "--input", str(events), "--data-dir", str(data), "--quiet")
    second = cli("run", "--input", str(events), "--data-dir", str(data), "--quiet")
    return data, corpus, first, second


def manifests(data: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((data / "runs").glob("*-run.json"))]


def test_every_hostile_line_is_accounted_for_and_both_runs_succeed(hostile):
    data, corpus, first, second = hostile
    for proc in (first, second):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    one, two = manifests(data)
    truth = json.loads((SAMPLE / "ground_truth.json").read_text())["counts"]
    counts = one["ingest"]
    assert counts["lines_read"] == truth["lines"] + len(corpus) + len(planted())
    assert counts["lines_read"] == counts["rows_written"] + counts["duplicates"] + counts["dead_letters"]
    # each parse-level reason has exactly the corpus' cases of it (plus the sample's and the planted ones)
    expected = Counter(reason for _, _, reason in corpus if reason not in ("event", "usage"))
    expected.update(truth["dead_letters_by_reason"])
    expected.update({"invalid_timestamp": 1, "unknown_event_type": 1})  # the two planted bad lines
    got = counts["dead_letters_by_reason"]
    for reason, n in expected.items():
        if reason != "conflicting_duplicate":
            assert got.get(reason, 0) == n, reason
    # the second run adds nothing and still succeeds
    assert two["ingest"]["rows_written"] == 0
    assert two["ingest"]["duplicates"] + two["ingest"]["dead_letters"] == two["ingest"]["lines_read"]


HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# a Delta table's id (a random UUID, kept in the warehouse's load state): 32 hex digits, never a card,
# but its all-digit groups can read as a dashed, Luhn-valid card ("...87443-6734-4344-949...")
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
PLANTED = [re.compile(r"[\s.\-]*".join(card)) for card in (VISA, AMEX, MC)]
PLANTED.append(re.compile(re.escape(EMAIL.split("@")[0]), re.IGNORECASE))


def _strings(rows) -> list[str]:
    """String values only (numbers are not where a card hides; a decimal like 11518.000000 would look
    like a dotted card); keyed digests are checked to be 64 hex digits instead of scanned."""
    out = []
    for value in rows:
        if isinstance(value, str):
            if not HEX_DIGEST.match(value):
                out.append(UUID.sub("<uuid>", value))
        elif isinstance(value, dict):
            out += list(value.keys()) + _strings(value.values())
        elif isinstance(value, list | tuple):
            out += _strings(value)
    return out


def _stored_strings(path: Path) -> list[str] | None:
    """Every string a reader of ``path`` gets back, for the binary formats; None for text files."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return table.column_names + _strings(table.to_pylist())
    if path.suffix == ".duckdb":
        con = duckdb.connect(str(path), read_only=True)
        try:
            out = []
            for schema, table in con.execute("select table_schema, table_name from information_schema.tables").fetchall():
                out += [table] + _strings(con.execute(f'select * from "{schema}"."{table}"').fetchall())
            return out
        finally:
            con.close()
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as z:
            return [z.read(n).decode("utf-8", "replace") for n in z.namelist()]
    return None


def _shipped_emails() -> set[str]:
    """Addresses inside the libraries we ship in outputs (plotly.js in the report, GX's Data Docs
    assets): authors' contacts, not customer data."""
    import great_expectations
    import plotly.offline

    found = set(EMAIL_RE.findall(plotly.offline.get_plotlyjs()))
    for path in Path(great_expectations.__file__).parent.rglob("static/**/*"):
        if path.is_file():
            found.update(EMAIL_RE.findall(path.read_bytes().decode("utf-8", "replace")))
    return found


def _leaks(data: Path, outputs: list[str]) -> dict[str, set]:
    hits: dict[str, set] = {}
    shipped = _shipped_emails()

    def scan(where: str, text: str, generic: bool) -> None:
        found = [m.group(0) for r in PLANTED for m in r.finditer(text)]
        found += pii_in(text) if generic else EMAIL_RE.findall(text)
        found = [f for f in found if f not in shipped]
        if found:
            hits.setdefault(where, set()).update(found[:3])

    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        where = str(path.relative_to(data))
        scan(where, path.name, True)
        stored = _stored_strings(path)
        for text in stored or ():
            scan(where, text, True)
        if stored is None:
            # every other file as text: planted values and emails (numbers in CSV/JSON/HTML are not cards)
            scan(where, path.read_bytes().decode("utf-8", "replace"), False)
    for i, text in enumerate(outputs):
        scan(f"terminal output {i}", text, False)
    return hits


def test_no_card_number_or_email_anywhere(hostile):
    data, _, first, second = hostile
    key = data / "secrets" / "redaction.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text()) == 64
    assert _leaks(data, [first.stdout, first.stderr, second.stdout, second.stderr]) == {}
    # and the sensitive ids kept their identity: two cards, two distinct accepted events
    con = duckdb.connect(str(data / "warehouse" / "revenue.duckdb"), read_only=True)
    ids = [r[0] for r in con.execute("select event_id from stg_events where invoice_id in ('in_a', 'in_b')").fetchall()]
    assert len(set(ids)) == 2


def test_the_leak_scan_finds_what_it_looks_for(tmp_path):
    """Control: the same scan reports planted values in each kind of file it reads."""
    import pyarrow as pa

    pq.write_table(pa.table({"x": [f"id {VISA}"]}), tmp_path / "a.parquet")
    (tmp_path / "b.json").write_text(json.dumps({"m": f"mail {EMAIL}"}))
    (tmp_path / "c.csv").write_text("4111 1111 1111 1111,1\n")
    con = duckdb.connect(str(tmp_path / "d.duckdb"))
    con.execute("create table t as select '378282246310005' as v")
    con.close()
    hits = _leaks(tmp_path, ["out 5555-5555-5555-4444"])
    assert set(hits) == {"a.parquet", "b.json", "c.csv", "d.duckdb", "terminal output 0"}


def test_exports_hold_no_live_formula(hostile):
    data, *_ = hostile
    month_dir = next((data / "reports").iterdir())
    cells = []
    for csv_file in month_dir.glob("*.csv"):
        cells += [c for line in csv_file.read_text().splitlines() for c in line.split(",")]
    for formula in FORMULAS:
        assert not any(c.strip('"').startswith(formula[:4]) for c in cells), formula
        assert any(c.strip('"').startswith("'" + formula[:4]) for c in cells), formula
    with zipfile.ZipFile(next(month_dir.glob("*.xlsx"))) as z:
        sheets = " ".join(z.read(n).decode() for n in z.namelist() if n.startswith("xl/worksheets/"))
    assert "<f>" not in sheets and "<f " not in sheets


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append(a.get("href") or a.get("xlink:href"))
        if tag == "script":
            self.scripts.append(a.get("src"))


def test_chart_labels_create_no_link_or_script(hostile, tmp_path):
    data, *_ = hostile
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: `make browser` installs it"
    html = next((data / "reports").iterdir()) / "report.html"
    assert "api_calls&lt;/a&gt;" in html.read_text() or "api_calls&amp;lt;/a&amp;gt;" in html.read_text()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run(flags + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Elements()
    parsed.feed(dom.stdout)
    assert parsed.scripts.count(None) == len(parsed.scripts)  # only the report's own inline scripts
    assert not any("evil" in (href or "") for href in parsed.links)
    assert "<svg" in dom.stdout and re.search(r"&lt;a href=", dom.stdout)  # the label is drawn, as text
