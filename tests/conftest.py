"""Shared fixtures: small generated datasets with ground truth, and lake helpers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
# One redaction key for the whole session, so lakes built in different data dirs from the same input
# compare equal (without it each data dir draws its own secret: tests that need that unset it).
os.environ["REVENUE_PII_KEY"] = "test-session-pii-key"

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    """A small generated input with bad lines, out-of-order files and gzip; with ground truth."""
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("generated")
    generate(out, customers=120, months=14, seed=11, bad_rate=0.05, start="2024-03", n_files=9)
    return out


@pytest.fixture(scope="session")
def ingested(generated, tmp_path_factory) -> tuple[Path, object]:
    from pipelines.ingest import run_ingest

    data_dir = tmp_path_factory.mktemp("data")
    result = run_ingest(cfg(data_dir, input_dir=generated / "events"))
    return data_dir, result


@pytest.fixture(scope="session")
def published(ingested) -> Path:
    """The shared published warehouse: the generated input ingested, metrics computed, dbt built, no gate.

    Tests that damage a lake or a warehouse copy it first; this one stays as built.
    """
    from pipelines.metrics import run_metrics
    from pipelines.transform import run_transform

    data_dir, _ = ingested
    run_metrics(cfg(data_dir))
    run_transform(cfg(data_dir))
    return data_dir


def commit_rows(data_dir: Path, table: str, rows: pa.Table, run_id: str | None = None) -> None:
    """Append ``rows`` (the table's columns, partition column included) to a lake table in one
    Delta commit, as a buggy writer would: for tests that damage a lake on purpose. ``run_id``
    defaults to the table's last run (a damaged output of that run)."""
    from pipelines import lake
    from pipelines.layout import DataLayout

    layout = DataLayout(data_dir)
    run_id = run_id or lake.last_run_id(layout, table) or "test-damage"
    partition = __import__("transforms.schemas", fromlist=["x"]).PARTITION_COLUMNS[table][0]
    files = lake.write_partitioned(rows, layout.table(table), partition, f"part-{run_id}-damage.parquet", [])
    lake.commit(layout, table, files, run_id)


def truth(path: Path) -> dict:
    return json.loads((path / "ground_truth.json").read_text())


def lake_snapshot(data_dir: Path) -> dict[str, list]:
    """Content of the lake's ingest tables, order- and file-name-independent."""
    from pipelines import lake
    from pipelines.layout import DataLayout

    snap = {}
    for table in ("events", "usage", "dead_letter"):
        t = lake.read_table(DataLayout(data_dir), table)
        if "event_id" in t.column_names and table != "dead_letter":
            t = t.sort_by([("event_id", "ascending")])
        else:
            t = t.sort_by([("raw_sha256", "ascending")])
        snap[table] = t.to_pylist()
    return snap


def cfg(data_dir: Path, **options):
    """The run configuration a CLI call with these options would build."""
    from pipelines.config import build_config

    return build_config(data_dir, **options)


CARD_LIKE = re.compile(r"\d(?:[\s.\-]*\d)*")
EMAIL_LIKE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
DECIMAL_NUMBER = re.compile(r"^\d+\.\d+$")  # 11518.000000000 is an amount, not a dotted card


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_runs(text: str) -> list[str]:
    """Digit runs (spaces, dots or dashes allowed between digits) holding 13-19 Luhn-valid digits that
    do not start with 0: the tests' own definition of a card number, independent of transforms.redact."""
    found = []
    for run in CARD_LIKE.findall(text):
        digits = re.sub(r"\D", "", run)
        if len(digits) < 13 or DECIMAL_NUMBER.match(run):
            continue
        if any(_luhn(digits[i:j]) and digits[i] != "0" for i in range(len(digits))
               for j in range(i + 13, min(i + 19, len(digits)) + 1)):  # fmt: skip
            found.append(run)
    return found


def pii_in(text: str) -> list[str]:
    """Card numbers and email addresses in ``text``."""
    return EMAIL_LIKE.findall(text) + card_runs(text)


def wait_until(condition, timeout: float) -> bool:
    """Poll ``condition()`` until it holds (True) or ``timeout`` seconds pass (False): waits on an
    outcome, never a fixed delay."""
    import threading
    import time

    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.01)
    return True


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for line in lines:
            handle.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def table_rows(t: pa.Table) -> int:
    return t.num_rows
