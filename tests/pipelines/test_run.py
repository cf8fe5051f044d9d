"""`revenue run` end to end on the bundled sample, the finance report in headless Chromium, bad usage."""

import http.server
import json
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from decimal import Decimal
from html.parser import HTMLParser

import duckdb
import pytest
from conftest import REPO, SAMPLE

from pipelines.layout import DataLayout
from pipelines.transform import CONTRACT_TABLES

ARTIFACTS = REPO / "test-artifacts"


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO,
                          **kwargs)


pytestmark = pytest.mark.slow  # every test here runs the CLI in a subprocess


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("run") / "data"
    proc = cli("run", "--input", str(SAMPLE / "events"), "--data-dir", str(data), "--quiet")
    return data, proc


def manifest(data, status=None):
    """The newest run manifest (with ``status``, the newest with that status)."""
    docs = [json.loads(p.read_text()) for p in sorted((data / "runs").glob("*-run.json"))]
    return [d for d in docs if status is None or d["status"] == status][-1]


def test_run_on_the_sample_succeeds_with_all_contract_tables(first_run):
    data, proc = first_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    assert set(CONTRACT_TABLES) <= tables
    m = manifest(data)
    assert m["status"] == "success" and m["quality"]["passed"] is True
    # a small run's transform process copied and parsed the dbt project while the metrics ran
    assert m["transform_prepared_ahead"] is True and m["transform_steps"]["project"] < 0.5
    assert m["versions"]["apache-beam"] and m["input_files"] and all(f["sha256"] for f in m["input_files"])
    truth = json.loads((SAMPLE / "ground_truth.json").read_text())["counts"]
    assert m["ingest"]["lines_read"] == truth["lines"]
    # the printed summary says what the manifest says
    out = proc.stdout.replace(",", "")
    for label, key in [("events read", "lines_read"), ("duplicates", "duplicates"), ("dead letters", "dead_letters")]:
        assert re.search(rf"{label}\s*│\s*{m['ingest'][key]}\b", out), label
    assert re.search(rf"written\s*│\s*{m['ingest']['rows_written']}\b", out)
    assert f"{Decimal(m['mrr_at_as_of']):,.2f}" in proc.stdout
    assert (data / "reports" / m["as_of"][:7] / "report.html").exists()


def test_running_twice_gives_identical_tables(first_run):
    data, _ = first_run
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    before = {t: sorted(map(str, con.execute(f"select * from {t}").fetchall())) for t in CONTRACT_TABLES}
    con.close()
    proc = cli("run", "--input", str(SAMPLE / "events"), "--data-dir", str(data), "--quiet")
    assert proc.returncode == 0, proc.stderr
    m = manifest(data)
    assert m["ingest"]["rows_written"] == 0 and m["ingest"]["duplicates"] == m["ingest"]["lines_read"]
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    after = {t: sorted(map(str, con.execute(f"select * from {t}").fetchall())) for t in CONTRACT_TABLES}
    assert after == before


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed: `make browser` installs it (`make test` does so first)"
    return path


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def _record(self):
        _Recorder.seen.append(f"{self.command} {self.path}")
        self.send_response(502)
        self.end_headers()

    do_GET = do_POST = do_CONNECT = do_HEAD = _record

    def log_message(self, *args):
        pass


class _Kpis(HTMLParser):
    def __init__(self):
        super().__init__()
        self.kpis = {}
        self.svg = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-kpi" in a:
            self.kpis[a["data-kpi"]] = a.get("data-value")
        if tag == "svg":
            self.svg += 1


def test_report_in_headless_chromium(first_run, chromium, tmp_path):
    data, _ = first_run
    m = manifest(data)
    month = m["as_of"][:7]
    html = data / "reports" / month / "report.html"
    # every request the page would make to the network goes to this recorder instead
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-server=http://127.0.0.1:{port}",
             "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{month}.png"
    subprocess.run(flags + ["--window-size=1200,2600", f"--screenshot={shot}", html.as_uri()], capture_output=True,
                   timeout=120, check=True)
    server.shutdown()
    server.server_close()
    # Chromium itself phones home (component updates, time sync) even with background networking off;
    # those go to Google's own hosts. Anything else would come from the page.
    browser_own = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com")
    from_page = [r for r in _Recorder.seen if not any(h in r.split(" ")[1].split("/")[2 if "//" in r else 0]
                                                       for h in browser_own)]
    assert from_page == [], from_page
    # control: the same setup does catch a page that loads something from the network
    _Recorder.seen.clear()
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://cdn.example.com/x.png"></body></html>')
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subprocess.run(flags + ["--dump-dom", control.as_uri()], capture_output=True, timeout=120)
    server.shutdown()
    server.server_close()
    assert any("cdn.example.com" in r for r in _Recorder.seen)
    assert shot.exists() and shot.stat().st_size > 10_000
    parsed = _Kpis()
    parsed.feed(dom.stdout)
    assert parsed.svg >= 4  # plotly rendered the charts from the inlined library
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    row = con.execute('select mrr, arr, net_new_mrr, active_customers, customer_churn_rate, gross_mrr_churn_rate, '
                      'net_mrr_churn_rate, arpa, quick_ratio, ltv from mrr_monthly where strftime("month", \'%Y-%m\') = ?',
                      [month]).fetchone()
    keys = ["mrr", "arr", "net_new_mrr", "active_customers", "customer_churn_rate", "gross_mrr_churn_rate",
            "net_mrr_churn_rate", "arpa", "quick_ratio", "ltv"]
    for key, value in zip(keys, row, strict=True):
        shown = parsed.kpis[key]
        assert (shown or None) == (None if value is None else str(value)), key
    assert Decimal(parsed.kpis["net_mrr_retention"]) == 1 - row[6]
    for name in ("fct_mrr.csv", "mrr_monthly.csv", "fct_revenue_daily.csv", "fct_usage_monthly.csv",
                 f"revenue-{month}.xlsx"):
        assert (html.parent / name).exists(), name


@pytest.mark.parametrize("args, message", [
    (["report", "--month", "2031-01"], "not in the warehouse"),
    (["report", "--month", "January"], "YYYY-MM"),
    (["run", "--input", "/no/such/folder"], "does not exist"),
    (["run", "--fx-rates", "/no/such/fx.csv"], "cannot read FX rates file"),
    (["run", "--fx-rates", "{bad_fx}"], "FX file needs the columns"),
])
def test_bad_usage_is_one_line_and_exit_1(first_run, tmp_path, args, message):
    data, _ = first_run
    bad = tmp_path / "bad.csv"
    bad.write_text("day;ccy;value\n")
    args = [a.replace("{bad_fx}", str(bad)) for a in args]
    proc = cli(*args, "--data-dir", str(data))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr


def test_report_of_a_fresh_run_shows_the_run_counts(first_run):
    data, _ = first_run
    m = manifest(data, status="success")
    page = (data / "reports" / m["as_of"][:7] / "report.html").read_text()
    shown = {k: int(v.replace(",", "")) for k, v in re.findall(r'data-count="(\w+)">([\d,]+)<', page)}
    want = {k: m["ingest"][k] for k in ("lines_read", "rows_written", "duplicates", "dead_letters")}
    assert shown == want
    assert shown["lines_read"] == shown["rows_written"] + shown["duplicates"] + shown["dead_letters"]
    assert f"Ingest of run {m['run_id']}" in page


KPI_TEXT = re.compile(r'data-kpi="(\w+)" data-value="([^"]*)">\s*<div class="label">[^<]*</div>\s*'
                      r'<div class="value">([^<]*)</div>')


@pytest.mark.parametrize(("currency", "decimals"), [("JPY", 0), ("KWD", 3)])
def test_other_reporting_currencies_pass_the_gate_and_format_their_minor_unit(tmp_path, currency, decimals):
    data = tmp_path / "data"
    proc = cli("run", "--input", str(SAMPLE / "events"), "--data-dir", str(data), "--quiet",
               "--reporting-currency", currency.lower())  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = manifest(data)
    assert m["quality"]["passed"] is True and m["reporting_currency"] == currency
    page = (data / "reports" / m["as_of"][:7] / "report.html").read_text()
    kpis = {key: (value, text) for key, value, text in KPI_TEXT.findall(page)}
    fraction = "" if decimals == 0 else r"\.\d{" + str(decimals) + "}"
    money = re.compile(r"^-?\d{1,3}(,\d{3})*" + fraction + " " + currency + "$")
    for key in ("mrr", "arr", "arpa", "net_new_mrr"):
        value, text = kpis[key]
        assert money.match(text), (key, text)
        assert Decimal(text.split()[0].replace(",", "")) == Decimal(value).quantize(Decimal(1).scaleb(-decimals))
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    assert con.execute("select distinct reporting_currency from fct_mrr").fetchall() == [(currency,)]
    # every MRR figure is a whole number of the currency's minor unit
    off_unit = con.execute(f"select count(*) from fct_mrr where mrr <> round(mrr, {decimals})").fetchone()[0]
    assert off_unit == 0


def test_the_workbook_holds_every_exported_row_with_exact_values(first_run):
    """Each sheet of the month's XLSX equals the warehouse rows it exports: every row, every money
    value to the cent (read back from the file), dates as dates."""
    import datetime as dt

    import openpyxl

    data, _ = first_run
    m = manifest(data, status="success")
    month = dt.date.fromisoformat(m["as_of"][:7] + "-01")
    book = openpyxl.load_workbook(data / "reports" / f"{month:%Y-%m}" / f"revenue-{month:%Y-%m}.xlsx", read_only=True)
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    cur = con.execute('select * from fct_mrr where "month" = ? order by customer_id', [month])
    names, want = [d[0] for d in cur.description], cur.fetchall()
    rows = list(book["fct_mrr"].iter_rows(values_only=True))
    assert list(rows[0]) == names and len(rows) - 1 == len(want) > 0
    for got, expected in zip(rows[1:], want, strict=True):
        for name, cell, value in zip(names, got, expected, strict=True):
            if isinstance(value, Decimal):
                assert Decimal(str(cell)) == value, (name, cell, value)  # the cell's text is the exact decimal
            elif isinstance(value, dt.date):
                assert cell.date() == value, name
            elif value is None:
                assert cell is None, name
            else:
                assert cell == value, name
    assert {s for s in book.sheetnames} >= {"mrr_monthly", "fct_mrr", "fct_revenue_daily", "fct_usage_monthly"}
