"""Live mode against the real RabbitMQ at 127.0.0.1:5672 (guest/guest): `revenue publish` and `revenue stream`.

Each test uses its own queue (unique name, deleted after). The slow ones run the CLI as a
subprocess and kill it with SIGKILL mid-stream, then check the lake against a batch ingest of
the same events (ground truth) and the published warehouse against a batch `revenue run`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO, cfg, wait_until

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
POISON = b'{"event_id": "evt_poison", "event_type": "invoice.paid", '  # a message cut in half
REPUBLISHED = 30  # the first lines are published twice (a publisher retry)
WAREHOUSE_TABLES = ("mrr_monthly", "fct_mrr", "dim_customers", "fct_revenue_daily", "fct_usage_monthly")


def _broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        return True
    except OSError:
        return False


needs_broker = pytest.mark.skipif(not _broker_up(), reason="RabbitMQ is not running on 127.0.0.1:5672")


@pytest.fixture
def queue():
    """A unique queue name's URI builder; the queue is deleted after the test."""
    from pipelines.sources.amqp import delete_queue

    name = f"revenue-test-{uuid.uuid4().hex[:12]}"
    yield lambda **params: f"{BROKER}?queue={name}" + "".join(f"&{k}={v}" for k, v in params.items())
    try:
        delete_queue(f"{BROKER}?queue={name}")
    except Exception:  # noqa: BLE001 - the queue may never have been declared
        pass


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("stream-input")
    generate(out, customers=25, months=6, seed=3, bad_rate=0.02, start="2024-03", n_files=3)
    return out / "events"


def _lines(input_dir: Path) -> list[bytes]:
    from pipelines.sources.amqp import read_event_lines

    return [line for _, line in read_event_lines(input_dir)]


def _publish(uri: str, input_dir: Path) -> int:
    """All lines, the first ones again, then the poison message; returns the poison's offset."""
    from pipelines.sources.amqp import publish_lines

    lines = _lines(input_dir)
    publish_lines(uri, lines + lines[:REPUBLISHED] + [POISON])
    return len(lines) + REPUBLISHED


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _committed_batches(data_dir: Path) -> int:
    from pipelines import lake
    from pipelines.layout import DataLayout

    return lake.table_version(DataLayout(data_dir), "dead_letter") or 0  # dead_letter: each batch's last commit


def _recorded_offset(data_dir: Path, uri: str) -> int:
    from pipelines import lake
    from pipelines.layout import DataLayout
    from pipelines.sources.amqp import parse_amqp_uri

    app_id = f"stream:{parse_amqp_uri(uri).key}"
    recorded = [lake.app_version(DataLayout(data_dir), t, app_id) for t in ("events", "usage", "dead_letter")]
    return -1 if None in recorded else min(recorded)


def _accepted(data_dir: Path) -> list[tuple[str, str]]:
    from pipelines import lake
    from pipelines.layout import DataLayout

    layout = DataLayout(data_dir)
    rows = []
    for table in ("events", "usage"):
        t = lake.read_table(layout, table, columns=["event_id", "payload_sha256"])
        rows += list(zip(t["event_id"].to_pylist(), t["payload_sha256"].to_pylist(), strict=True))
    return sorted(rows)


def _dead_letters(data_dir: Path) -> list[dict]:
    from pipelines import lake
    from pipelines.layout import DataLayout

    return lake.read_table(DataLayout(data_dir), "dead_letter").to_pylist()


def _kill_mid_stream(uri: str, data_dir: Path, *extra: str) -> None:
    """Start the consumer, SIGKILL it as soon as its first batch is in the lake."""
    proc = subprocess.Popen(_cli("stream", "--source", uri, "--data-dir", str(data_dir), "--max-batch-events", "25",
                                 "--max-batch-seconds", "1", "--publish-every", "3600", *extra),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_until(lambda: _committed_batches(data_dir) >= 1 or proc.poll() is not None, 60), "no batch in 60s"
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def _restart_then_sigterm(uri: str, data_dir: Path, last_offset: int) -> list[dict]:
    """A restart that gets SIGTERM once the lake holds ``last_offset``: it publishes and exits 0.
    Returns its JSON log lines."""
    proc = subprocess.Popen(_cli("stream", "--source", uri, "--data-dir", str(data_dir), "--max-batch-events", "5000",
                                 "--max-batch-seconds", "1", "--publish-every", "3600",
                                 "--dead-letter-critical", "0.5"),  # the poison and republished bad lines
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_until(lambda: _recorded_offset(data_dir, uri) == last_offset or proc.poll() is not None, 120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def _warehouse(data_dir: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(data_dir / "warehouse" / "revenue.duckdb"), read_only=True) as con:
        return con.sql(f"select * from {table} order by all").fetchall()


# ------------------------------------------------------------------ fast


def test_amqp_uri_parameters():
    from pipelines.sources.amqp import parse_amqp_uri
    from transforms.errors import ConfigError

    address = parse_amqp_uri("amqp://u:p%40ss@broker:5673/prod%2Fbilling?queue=events&type=quorum&prefetch=500")
    assert (address.host, address.port, address.vhost, address.queue) == ("broker", 5673, "prod/billing", "events")
    assert (address.user, address.password, address.queue_type, address.prefetch) == ("u", "p@ss", "quorum", 500)
    assert address.key == "amqp://broker:5673/prod%2Fbilling?queue=events"  # no credentials in the lake
    assert parse_amqp_uri("amqp://h/%2F?queue=q").vhost == "/"
    for bad in ("amqp://h/%2F", "amqp://h/%2F?queue=q&type=fanout", "amqp://h/?queue=q&prefetch=0",
                "amqp://h/?queue=q&durable=1", "http://h/?queue=q"):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_amqp_uri(bad)


def test_message_labels_give_stable_dead_letter_keys():
    """The same message at the same position keeps its key in any batch (a replay is a duplicate)."""
    import pyarrow as pa

    from transforms.ingest import DEAD_STAGING
    from transforms.messages import MessageSource, label_table

    body = b"{broken"
    first = [MessageSource.of(f"amqp://h:5672/%2F?queue=q#offset={n}", n, b"x") for n in range(3)]
    first.append(MessageSource.of("amqp://h:5672/%2F?queue=q#offset=3", 3, body))
    row = {c: None for c in DEAD_STAGING.names} | {"source_file": "message-batch", "source_line": 4, "raw": "{broken",
                                                    "raw_sha256": "x", "message": "m", "reason": "malformed_json",
                                                    "file_index": 0}  # fmt: skip
    labelled = label_table(pa.Table.from_pylist([row], schema=DEAD_STAGING), first, "dead_letter").to_pylist()[0]
    replay = [MessageSource.of("amqp://h:5672/%2F?queue=q#offset=3", 3, body)]
    again = label_table(pa.Table.from_pylist([row | {"source_line": 1}], schema=DEAD_STAGING), replay,
                        "dead_letter").to_pylist()[0]  # fmt: skip
    assert labelled["source_file"] == "amqp://h:5672/%2F?queue=q#offset=3" and labelled["source_line"] == 3
    assert labelled["raw_sha256"] == again["raw_sha256"] != "x"
    assert (labelled["file_index"], again["file_index"]) == (3, 0)


def test_unsupported_sources_are_configuration_errors(tmp_path):
    from pipelines.stream import StreamOptions, open_source
    from transforms.errors import ConfigError

    for uri in ("kafka://127.0.0.1:9092/events", "nats://127.0.0.1/x", f"file://{tmp_path}/missing"):
        with pytest.raises(ConfigError):
            open_source(uri, StreamOptions(uri))


# ------------------------------------------------------------------ against RabbitMQ


@needs_broker
@pytest.mark.slow
def test_stream_queue_killed_and_restarted_is_exactly_once_and_matches_a_batch_run(
    queue, generated, published, tmp_path
):
    """``published`` (conftest): the same events built in batch (ingest, metrics, dbt build)."""
    uri = queue(type="stream")
    poison_offset = _publish(uri, generated / "events")
    batch_run = published
    data_dir = tmp_path / "data"
    _kill_mid_stream(uri, data_dir)
    position = _recorded_offset(data_dir, uri)
    records = _restart_then_sigterm(uri, data_dir, poison_offset)
    batches = [r for r in records if r["kind"] == "batch"]
    assert batches, "the restart committed nothing: the kill came too late to test a resume"
    # resumed from the position in the lake: exactly the offsets after it, each read once
    assert sum(b["messages"] for b in batches) == poison_offset - position
    assert records[-1]["kind"] == "stop" and records[-1]["stopped_by"] == "signal"
    published_status = [r for r in records if r["kind"] == "publish"][-1]  # published on the way out
    assert published_status["status"] == "success", published_status

    accepted = _accepted(data_dir)
    assert len({event_id for event_id, _ in accepted}) == len(accepted), "an event is in the lake twice"
    assert accepted == _accepted(batch_run)
    dead = _dead_letters(data_dir)
    assert len({d["raw_sha256"] for d in dead}) == len(dead), "a dead letter was recorded twice"
    poison = [d for d in dead if d["source_file"].endswith(f"#offset={poison_offset}")]
    assert len(poison) == 1 and poison[0]["reason"] == "malformed_json"
    assert poison[0]["source_line"] == poison_offset and "queue=revenue-test-" in poison[0]["source_file"]
    for table in WAREHOUSE_TABLES:
        assert _warehouse(data_dir, table) == _warehouse(batch_run, table), table


@needs_broker
@pytest.mark.slow
def test_classic_queue_acks_after_commit_and_dedups_redeliveries(queue, generated, ingested, tmp_path):
    from pipelines.sources.amqp import parse_amqp_uri
    from pipelines.stream import StreamOptions, run_stream

    uri = queue(type="classic")
    done = subprocess.run(_cli("publish", "--to", uri, "--input", str(generated / "events")), env=_env(),
                          capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    lines = _lines(generated / "events")
    assert done.stdout.decode().strip() == f"published {len(lines)} messages to 127.0.0.1:5672/%2F?{uri.split('?')[1]}"
    from pipelines.sources.amqp import publish_lines

    publish_lines(uri, lines[:REPUBLISHED] + [POISON])  # a publisher's retry, then a poison message
    batch_run, _ = ingested
    data_dir = tmp_path / "data"
    port = _free_port()
    proc = subprocess.Popen(_cli("stream", "--source", uri, "--data-dir", str(data_dir), "--max-batch-events", "25",
                                 "--max-batch-seconds", "1", "--publish-every", "3600", "--metrics-port", str(port)),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_until(lambda: _committed_batches(data_dir) >= 1 or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read().decode()
        scraped = []

        def batch_in_metrics() -> bool:
            scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            return 'revenue_stream_events_total{outcome="written"}' in scraped[-1]

        assert wait_until(batch_in_metrics, 30), scraped[-1]
        scrape = scraped[-1]
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert health.status == 200
    assert "revenue_stream_batches_total" in scrape and "revenue_stream_consumer_lag" in scrape
    assert 'revenue_stream_events_total{outcome="written"}' in scrape

    # the restart, in process and lake-only (the stream-queue test covers the warehouse)
    result = run_stream(cfg(data_dir), StreamOptions(uri, max_batch_events=5000, max_batch_seconds=1,
                                                     stop_after_idle=1.5, warehouse=False))  # fmt: skip
    assert result.stopped_by == "idle" and result.batches >= 1
    accepted = _accepted(data_dir)
    assert len({event_id for event_id, _ in accepted}) == len(accepted)
    assert accepted == _accepted(batch_run)
    dead = _dead_letters(data_dir)
    assert len({d["raw_sha256"] for d in dead}) == len(dead)
    poison = [d for d in dead if d["raw"].startswith('{"event_id": "evt_poison"')]
    assert len(poison) == 1 and "#sha256=" in poison[0]["source_file"]
    from pipelines.sources.amqp import connect

    connection = connect(parse_amqp_uri(uri))
    try:  # everything acknowledged: nothing left in the queue
        assert connection.channel().queue_declare(parse_amqp_uri(uri).queue, passive=True).method.message_count == 0
    finally:
        connection.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_landing_folder_ingests_each_file_once(small_input, tmp_path):
    """file:// source: files already in the lake are skipped on restart; a new file is picked up."""
    import shutil

    from pipelines.stream import StreamOptions, run_stream

    landing = tmp_path / "landing"
    files = sorted(p for p in small_input.rglob("*") if p.is_file())
    landing.mkdir()
    for path in files[:2]:
        shutil.copy(path, landing / path.name)
        os.utime(landing / path.name, (1, 1))  # settled
    data_dir = tmp_path / "data"
    options = StreamOptions(f"file://{landing}", max_batch_events=10, stop_after_idle=0.5, warehouse=False)
    first = run_stream(cfg(data_dir), options)
    assert first.messages == 2
    before = _accepted(data_dir)
    again = run_stream(cfg(data_dir), options)
    assert again.messages == 0 and _accepted(data_dir) == before
    for path in files[2:]:
        shutil.copy(path, landing / path.name)
        os.utime(landing / path.name, (1, 1))
    third = run_stream(cfg(data_dir), options)
    assert third.messages == len(files) - 2
    ingest = tmp_path / "batch"
    from pipelines.ingest import run_ingest

    run_ingest(cfg(ingest, input_dir=landing))
    assert _accepted(data_dir) == _accepted(ingest)


@pytest.mark.slow
def test_unreachable_broker_is_retried_with_backoff_and_reported_unhealthy(tmp_path):
    """Nothing listens on the port: the consumer logs each retry, doubling the wait, serves /healthz
    503 meanwhile, and --stop-after-idle still ends it with exit 0."""
    closed = _free_port()
    port = _free_port()
    proc = subprocess.Popen(_cli("stream", "--source", f"amqp://guest:guest@127.0.0.1:{closed}/%2F?queue=q",
                                 "--data-dir", str(tmp_path / "data"), "--metrics-port", str(port),
                                 "--stop-after-idle", "4"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        statuses = []

        def unhealthy() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                statuses.append(200)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError:
                return False  # not serving yet
            return statuses[-1] == 503

        assert wait_until(lambda: unhealthy() or proc.poll() is not None, 60)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert statuses[-1] == 503
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    waits = [r["retry_in"] for r in records if r["kind"] == "broker_unavailable"]
    assert waits[:3] == [0.5, 1.0, 2.0], waits
    assert records[-1]["kind"] == "stop" and records[-1]["stopped_by"] == "idle"
    assert "guest:guest" not in stderr.decode()


@needs_broker
@pytest.mark.slow
def test_classic_queue_commit_without_ack_is_redelivered_and_deduplicated(queue, small_input, tmp_path):
    """The crash window of a classic queue, made deterministic: a batch committed to the lake whose
    ack never reached the broker is delivered again; the restart counts it as duplicates."""
    from pipelines.sources.amqp import publish_lines
    from pipelines.stream import (
        AmqpStreamSource,
        StreamMetrics,
        StreamOptions,
        StreamResult,
        _commit_batch,
        run_stream,
    )
    from tests.conftest import truth

    uri = queue(type="classic")
    lines = _lines(small_input)
    publish_lines(uri, lines)
    data_dir = tmp_path / "data"
    options = StreamOptions(uri, max_batch_events=100, max_batch_seconds=1, stop_after_idle=1.5, warehouse=False)
    config = cfg(data_dir).with_pii()
    source = AmqpStreamSource(uri, options)
    source.open(config.layout)
    batch = source.collect(lambda: False)
    first = StreamMetrics()
    _commit_batch(config, source, batch, first, StreamResult())
    source.close()  # no ack: the broker requeues the batch
    kept_first = first.lines.labels("written")._value.get() + first.lines.labels("dead_letter")._value.get()
    assert kept_first > 0

    metrics = StreamMetrics()
    result = run_stream(config, options, metrics)
    assert result.messages == len(lines)  # the committed batch came back, with everything else
    assert metrics.lines.labels("duplicate")._value.get() >= kept_first  # ... and was all duplicates
    accepted = _accepted(data_dir)
    assert len({event_id for event_id, _ in accepted}) == len(accepted) == truth(small_input.parent)["counts"]["accepted"]
    dead = _dead_letters(data_dir)
    assert len({d["raw_sha256"] for d in dead}) == len(dead) == truth(small_input.parent)["counts"]["dead_letters"]
