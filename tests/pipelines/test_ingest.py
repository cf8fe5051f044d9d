"""`revenue ingest` end to end: conservation, ground truth, idempotence, crash safety, PII."""

import gzip
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, cfg, lake_snapshot, truth, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import lake
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout


def test_counts_equal_the_generators_ground_truth(generated, ingested):
    data_dir, result = ingested
    expected = truth(generated)["counts"]
    assert result.lines_read == expected["lines"]
    assert result.rows_written == expected["accepted"]
    assert result.duplicates == expected["duplicates"]
    assert result.dead_letters == expected["dead_letters"]
    assert dict(sorted(result.dead_letters_by_reason.items())) == expected["dead_letters_by_reason"]
    manifest = json.loads((data_dir / "runs" / f"{result.run_id}-ingest.json").read_text())
    assert manifest["counts"]["lines_read"] == expected["lines"]
    assert manifest["counts"]["rows_written"] + manifest["counts"]["duplicates"] + \
        manifest["counts"]["dead_letters"] == manifest["counts"]["lines_read"]
    assert len(manifest["input_files"]) == 9 and all(f["sha256"] for f in manifest["input_files"])


def test_ingesting_twice_leaves_the_lake_unchanged(generated, tmp_path):
    run_ingest(cfg(tmp_path, input_dir=generated / "events"))
    before = lake_snapshot(tmp_path)
    files_before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "lake").rglob("*.parquet"))
    again = run_ingest(cfg(tmp_path, input_dir=generated / "events"))
    assert again.rows_written == 0 and again.dead_letters == 0
    assert again.duplicates == again.lines_read
    assert lake_snapshot(tmp_path) == before
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "lake").rglob("*.parquet")) == files_before


def test_overlapping_input_adds_only_new_events(tmp_path):
    def ev(i, amount=100):
        return json.dumps({"event_id": f"e{i}", "event_type": "invoice.paid", "occurred_at": f"2024-05-{1 + i % 28:02d}T00:00:00Z",
                           "customer_id": f"c{i % 3}", "invoice_id": f"i{i}", "currency": "GBP", "amount": amount})
    write_lines(tmp_path / "in1" / "a.jsonl", [ev(i) for i in range(0, 60)])
    write_lines(tmp_path / "in2" / "b.jsonl", [ev(i) for i in range(40, 100)] + [ev(5, amount=7)])
    first = run_ingest(cfg(tmp_path / "d", input_dir=tmp_path / "in1"))
    second = run_ingest(cfg(tmp_path / "d", input_dir=tmp_path / "in2"))
    assert (first.rows_written, second.rows_written, second.duplicates) == (60, 40, 20)
    assert second.dead_letters_by_reason == {"conflicting_duplicate": 1}
    events = lake.read_table(DataLayout(tmp_path / "d"), "events")
    assert sorted(events["event_id"].to_pylist()) == sorted(f"e{i}" for i in range(100))
    e5 = [r for r in events.to_pylist() if r["event_id"] == "e5"][0]
    assert e5["amount"] == 100  # the lake's version stays


def test_card_numbers_never_reach_any_output(tmp_path):
    cards = ["4111111111111111", "5500 0000 0000 0004", "3400-0000-0000-009"]
    lines = [
        json.dumps({"event_id": "a", "event_type": "customer.created", "occurred_at": "2024-01-01T00:00:00Z",
                    "customer_id": "c", "note": f"card {cards[0]}", "name": f"x {cards[1]}"}),
        '{"event_id": "b", "memo": "' + cards[2] + '"',
        json.dumps({"event_id": "c", "event_type": "usage.recorded", "occurred_at": "2024-01-01T00:00:00Z",
                    "customer_id": "c", "meter": "m", "quantity": 1, "attrs": {"deep": [cards[1]]}}),
        json.dumps({"event_id": "a", "event_type": "customer.created", "occurred_at": "2024-01-01T00:00:00Z",
                    "customer_id": "c", "note": f"conflict {cards[2]}"}),
    ]
    write_lines(tmp_path / "in" / "x.jsonl", lines)
    result = run_ingest(cfg(tmp_path / "d", input_dir=tmp_path / "in"))
    assert result.rows_written == 2 and result.dead_letters == 2
    digits = [c.replace(" ", "").replace("-", "") for c in cards]
    for path in (tmp_path / "d").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for card in cards + digits:
                assert card.encode() not in blob, f"{card} found in {path}"
    for table in ("events", "usage", "dead_letter"):
        text = json.dumps(lake.read_table(DataLayout(tmp_path / "d"), table).to_pylist(), default=str)
        for card in cards + digits:
            assert card not in text


def test_bad_input_files_are_dead_lettered_not_skipped(tmp_path):
    src = tmp_path / "in"
    write_lines(src / "ok.jsonl", [json.dumps({"event_id": "e1", "event_type": "usage.recorded",
                "occurred_at": "2024-01-01T00:00:00Z", "customer_id": "c", "meter": "m", "quantity": 2})])
    full = gzip.compress(b"".join(json.dumps({"event_id": f"g{i}", "event_type": "usage.recorded",
                         "occurred_at": "2024-01-01T00:00:00Z", "customer_id": "c", "meter": "m",
                         "quantity": i}).encode() + b"\n" for i in range(5000)))
    (src / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (src / "fake.jsonl.gz").write_bytes(b"this is not gzip")
    os.symlink(tmp_path / "nowhere.jsonl", src / "dangling.jsonl")
    write_lines(src / "big.jsonl", [b'{"event_id": "' + b"x" * (10 << 20) + b'"}', b"", b"   "])
    result = run_ingest(cfg(tmp_path / "d", input_dir=src))
    reasons = result.dead_letters_by_reason
    assert reasons["truncated_gzip"] == 1
    assert reasons["unreadable_file"] == 2
    assert reasons["line_too_long"] == 1
    assert reasons["empty_line"] == 2
    assert result.lines_read == result.rows_written + result.duplicates + result.dead_letters
    dead = lake.read_table(DataLayout(tmp_path / "d"), "dead_letter")
    assert max(len(r) for r in dead["raw"].to_pylist()) < 20_000


@pytest.mark.parametrize("args, message", [
    (["--input", "/does/not/exist"], "does not exist"),
    (["--input", "{empty}"], "no *.jsonl"),
])
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", *args, "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


class Crash(Exception):
    pass


@pytest.mark.parametrize("commits_before_crash", [0, 1, 2])
def test_crash_between_table_commits_then_rerun_gives_the_clean_lake(generated, ingested, tmp_path, monkeypatch,
                                                                     commits_before_crash):
    """Killed before any commit (files written, none visible), after events, after usage: the rerun
    makes the clean lake, and every run's manifest still conserves lines."""
    clean_dir, _ = ingested
    real_commit = lake.commit
    done = []

    def crashing_commit(*args, **kwargs):
        if len(done) >= commits_before_crash:
            raise Crash(f"killed after {len(done)} commits")
        done.append(args[1])
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(lake, "commit", crashing_commit)
    with pytest.raises(Crash):
        run_ingest(cfg(tmp_path, input_dir=generated / "events"))
    monkeypatch.undo()
    layout = DataLayout(tmp_path)
    assert lake.versions(layout) == {t: 1 for t in done}  # only whole commits are visible
    rerun = run_ingest(cfg(tmp_path, input_dir=generated / "events"))
    assert rerun.lines_read == rerun.rows_written + rerun.duplicates + rerun.dead_letters
    assert lake_snapshot(tmp_path) == lake_snapshot(clean_dir)
    assert not any(layout.staging_root.iterdir())


# observable moments of an ingest, in order: a kill at each must leave a lake that a rerun makes clean
KILL_POINTS = {
    "parsing": lambda d: any((d / "lake" / "_staging").glob("*/parsed")),
    "data files written, not committed": lambda d: any((d / "lake" / "events").glob("*/part-*.parquet")),
    "first table committed": lambda d: (d / "lake" / "events" / "_delta_log" / "00000000000000000001.json").exists(),
}


def kill_when(proc, reached) -> bool:
    """SIGKILL the process group as soon as ``reached()`` holds; False if the process ended first."""
    while proc.poll() is None:
        if reached():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        try:
            proc.wait(timeout=0.005)  # returns at once when the process ends
        except subprocess.TimeoutExpired:
            pass
    return False


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_any_moment_then_rerun_gives_the_clean_lake(generated, ingested, tmp_path, point):
    clean_dir, _ = ingested
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ingest", "--input",
                             str(generated / "events"), "--data-dir", str(data)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    killed = kill_when(proc, lambda: KILL_POINTS[point](data))
    assert killed or point == "first table committed", f"ingest finished before {point}"
    run_ingest(cfg(data, input_dir=generated / "events"))
    assert lake_snapshot(data) == lake_snapshot(clean_dir)
    assert not any((data / "lake" / "_staging").iterdir())


good_line = st.builds(lambda i, amt, day: json.dumps({
    "event_id": f"e{i}", "event_type": "invoice.paid", "occurred_at": f"2024-02-{day:02d}T10:00:00+01:00",
    "customer_id": "c", "invoice_id": f"i{i}", "currency": "JPY", "amount": amt}), st.integers(0, 40),
    st.integers(0, 10**9), st.integers(1, 28))
bad_line = st.sampled_from(["{", "", "[]", '{"event_id": "z"}', "\xff", '{"event_id":"n","event_type":"invoice.paid",'
                            '"occurred_at":"2024-01-01T00:00:00","customer_id":"c","invoice_id":"i","currency":"USD",'
                            '"amount":1}'])


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(files=st.lists(st.lists(st.one_of(good_line, bad_line), max_size=30), min_size=1, max_size=4))
def test_property_conservation_and_exactly_once(tmp_path_factory, files):
    base = tmp_path_factory.mktemp("prop")
    for i, lines in enumerate(files):
        write_lines(base / "in" / f"f{i}.jsonl", lines)
    result = run_ingest(cfg(base / "d", input_dir=base / "in"), checksums=False)
    total = sum(len(lines) for lines in files)
    assert result.lines_read == total
    assert result.lines_read == result.rows_written + result.duplicates + result.dead_letters
    # every distinct good event id lands exactly once, with the first version in input order
    first = {}
    for lines in files:
        for line in lines:
            if line.startswith('{"event_id": "e'):
                obj = json.loads(line)
                first.setdefault(obj["event_id"], obj["amount"])
    events = lake.read_table(DataLayout(base / "d"), "events").to_pylist()
    assert sorted(r["event_id"] for r in events) == sorted(first)
    assert {r["event_id"]: r["amount"] for r in events} == first


def test_sharded_dedup_gives_the_same_lake(generated, ingested, tmp_path):
    clean_dir, clean = ingested
    result = run_ingest(cfg(tmp_path, input_dir=generated / "events", shards=4), checksums=False)
    assert result.counts() == clean.counts()
    assert lake_snapshot(tmp_path) == lake_snapshot(clean_dir)
    # one file per partition whatever the number of shards
    assert all(len(list(d.iterdir())) == 1 for d in (tmp_path / "lake" / "events").glob("event_date=*"))


def test_the_duplicate_lookup_returns_each_held_ids_payload_hash_and_nothing_else(ingested):
    """The lookup reads event ids everywhere, then payload hashes only where an id was found: the
    hashes it returns must be the lake's, for ids held in events and in usage, whatever file holds them."""
    from pipelines.ingest import INGEST_TABLES, LakeKeys

    layout = DataLayout(ingested[0])
    pinned = lake.versions(layout, INGEST_TABLES)
    expected = {}
    for table in ("events", "usage"):
        rows = lake.read_table(layout, table, ["event_id", "payload_sha256"], version=pinned[table])
        step = max(1, rows.num_rows // 7)  # ids spread over many day files
        picked = rows.take(list(range(0, rows.num_rows, step))[:7])
        expected.update(zip(picked["event_id"].to_pylist(), picked["payload_sha256"].to_pylist(), strict=True))
    absent = [f"absent-{i}" for i in range(50)]
    keys = LakeKeys(layout, pinned)
    assert keys.event_hashes(absent) == {}
    assert keys.event_hashes(absent + list(expected)) == expected
    assert len(expected) == 14
