"""transforms.concurrency.OrderedWorker: results in submission order, bounded, failures surface."""

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import ingest
from transforms.concurrency import OrderedWorker
from transforms.ingest import LineChunk, ParseEventLines


class Overlap:
    """How many calls run at once, and the most that ever did (``with overlap:`` around a call's work)."""

    def __init__(self):
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def __enter__(self):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)

    def __exit__(self, *exc):
        with self.lock:
            self.running -= 1


def test_results_come_back_once_each_in_submission_order():
    worker = OrderedWorker(limit=2)
    got = []
    for k in range(10):
        # later calls finish sooner: the order must still be the submission order
        got += worker.submit(k, lambda k=k: (time.sleep(0.002 * (10 - k)), k * k)[1])
        assert len(worker) <= 2
    got += worker.drain()
    assert got == [(k, k * k) for k in range(10)]
    assert len(worker) == 0
    worker.close()


def test_at_most_limit_calls_are_unreturned_and_one_runs_at_a_time():
    worker = OrderedWorker(limit=1)
    overlap = Overlap()

    def call(k):
        with overlap:
            time.sleep(0.005)
        return k

    returned = []
    for k in range(6):
        done = worker.submit(k, call, k)
        returned += [tag for tag, _ in done]
        assert len(worker) == 1  # the call just submitted; every earlier one was handed back
        assert returned == list(range(k))
    assert [tag for tag, _ in worker.drain()] == [5]
    assert overlap.most == 1
    worker.close()


def test_a_failed_call_raises_in_the_caller_and_later_results_are_not_returned():
    worker = OrderedWorker(limit=2)
    assert worker.submit("a", lambda: "A") == []

    def boom():
        raise ValueError("query failed")

    assert worker.submit("b", boom) == []
    assert worker.submit("c", lambda: "C") == [("a", "A")]
    with pytest.raises(ValueError, match="query failed"):
        worker.submit("d", lambda: "D")  # must hand back "b" first
    assert len(worker) == 0  # "c" and "d" go with the failed bundle, never returned later
    # the worker is usable again (a retried bundle)
    assert worker.submit("e", lambda: "E") == []
    assert worker.drain() == [("e", "E")]
    worker.close()


def test_a_failure_surfaces_from_drain_too():
    worker = OrderedWorker(limit=3)
    worker.submit(1, lambda: 1)
    worker.submit(2, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        worker.drain()
    worker.close()


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        OrderedWorker(limit=0)
    with pytest.raises(ValueError):
        OrderedWorker(limit=1, threads=0)


def test_threads_run_calls_side_by_side_and_results_keep_submission_order():
    worker = OrderedWorker(limit=2, threads=2)
    both_running = threading.Barrier(2, timeout=5)  # broken (an error) unless two calls run at once
    overlap = Overlap()

    def call(k):
        with overlap:
            if k < 2:
                both_running.wait()
            time.sleep(0.002 * (8 - k))  # later calls finish sooner
        return k

    got = []
    for k in range(8):
        got += worker.submit(k, call, k)
    got += worker.drain()
    assert got == [(k, k) for k in range(8)]
    assert overlap.most == 2
    worker.close()


def _lines(n, start=0):
    return tuple(
        (f'{{"event_id":"e{start + i}","event_type":"invoice.paid","occurred_at":"2024-05-01T00:00:00Z",'
         f'"customer_id":"c","invoice_id":"i","currency":"EUR","amount":{i}}}').encode()
        for i in range(n)
    )


def _pipeline():
    return TestPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"]))


def test_parse_batches_queried_ahead_keep_every_line(monkeypatch):
    """Many small batches (each queried on the background thread): every line comes out once."""
    monkeypatch.setattr(ingest._ParseFn, "BATCH_LINES", 7)
    chunks = [LineChunk(f"f{k}.jsonl", k, 1, _lines(5, 5 * k)) for k in range(9)]
    with _pipeline() as p:
        parsed = p | beam.Create(chunks, reshuffle=False) | ParseEventLines()
        ids = parsed.events | beam.FlatMap(lambda t: t["event_id"].to_pylist())
        assert_that(ids, equal_to([f"e{i}" for i in range(45)]))


def test_a_failed_background_query_fails_the_pipeline(monkeypatch):
    def failing_query(chunks, con=None):
        raise RuntimeError("duckdb went away")

    monkeypatch.setattr(ingest, "query_chunks", failing_query)
    chunks = [LineChunk("f.jsonl", 0, 1, _lines(5))]
    with pytest.raises(Exception, match="duckdb went away"):
        with _pipeline() as p:
            _ = p | beam.Create(chunks, reshuffle=False) | ParseEventLines()


def test_query_rows_come_in_line_order_whatever_the_connections_threads():
    """A one-thread connection keeps the line order (the sort is skipped); two threads need the sort."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa

    from transforms.fastparse import QUERY_BATCH_ROWS, connection, query_chunks

    lines = pa.array(list(_lines(3 * QUERY_BATCH_ROWS + 5)) + [b"not json"], pa.large_binary())

    def query(threads):
        return query_chunks([(lines, "f.jsonl", 0, 1)], connection(threads))

    results = []
    for threads in (1, 2):
        with ThreadPoolExecutor(1) as pool:  # a thread of its own: connections are per thread
            results.append(pool.submit(query, threads).result())
    for result in results:
        assert result.fast["i"].to_pylist() == list(range(len(lines) - 1))
        assert result.accepted.tolist() == [True] * (len(lines) - 1) + [False]
    assert results[0].fast.equals(results[1].fast)
    assert np.array_equal(results[0].starts, results[1].starts)
