"""ReadEventFiles / ParseEventLines / dedup_shard under Beam's TestPipeline."""

import gzip
import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.ingest import (
    LineChunk,
    ParseEventLines,
    ReadEventFiles,
    dedup_shard,
    empty_staging,
    parse_chunk,
)


def _ev(event_id, customer="c1", amount=100, line_extra=None):
    e = {"event_id": event_id, "event_type": "invoice.paid", "occurred_at": "2024-05-01T00:00:00Z",
         "customer_id": customer, "invoice_id": "i", "currency": "EUR", "amount": amount}
    e.update(line_extra or {})
    return json.dumps(e)


def _pipeline():
    return TestPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"]))


def test_read_and_parse_files_with_testpipeline(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_text(_ev("e1") + "\n{broken\n" + _ev("e2") + "\n")
    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wt") as h:
        h.write(_ev("e3") + "\n")
    truncated = tmp_path / "c.jsonl.gz"
    full = gzip.compress(("\n".join(_ev(f"t{i}") for i in range(2000)) + "\n").encode())
    truncated.write_bytes(full[: len(full) // 2])
    files = [(0, str(plain), "a.jsonl"), (1, str(packed), "b.jsonl.gz"), (2, str(truncated), "c.jsonl.gz")]
    with _pipeline() as p:
        parsed = p | beam.Create(files) | ReadEventFiles(chunk_lines=2) | ParseEventLines()
        ids = parsed.events | "Ids" >> beam.FlatMap(lambda t: t["event_id"].to_pylist())
        reasons = parsed.dead_letter | "Reasons" >> beam.FlatMap(lambda t: t["reason"].to_pylist())
        lines = parsed.lines | beam.CombineGlobally(sum)
        assert_that(reasons | "Keep" >> beam.Filter(lambda r: r != "malformed_json") | beam.combiners.Count.Globally(),
                    equal_to([1]), label="OneTruncation")
        assert_that(reasons | "Malformed" >> beam.Filter(lambda r: r == "malformed_json")
                    | "CountMalformed" >> beam.combiners.Count.Globally(), equal_to([1]), label="OneMalformed")
        assert_that(ids | "Firsts" >> beam.Filter(lambda i: not i.startswith("t")), equal_to(["e1", "e2", "e3"]),
                    label="GoodIds")
        # lines = parsed ok + dead: the truncated file contributes its readable lines plus one
        assert_that(lines | "Check" >> beam.Map(lambda n: n >= 5), equal_to([True]), label="Lines")


def _tables(lines, file_index=0, name="f.jsonl"):
    tables, _ = parse_chunk(LineChunk(name, file_index, 1, tuple(line.encode() for line in lines)), None)
    return tables


def test_dedup_keeps_first_in_input_order_and_counts_duplicates():
    a = _tables([_ev("e1"), _ev("e2"), _ev("e1")], 0, "a.jsonl")  # exact duplicate
    b = _tables([_ev("e1", amount=999), _ev("e3")], 1, "b.jsonl")  # conflict
    events = pa.concat_tables([b["events"], a["events"]])  # arrival order must not matter
    result = dedup_shard(events, empty_staging("usage"), empty_staging("dead_letter"), lambda ids: {}, lambda k: set())
    kept = {r["event_id"]: r for r in result.events.to_pylist()}
    assert sorted(kept) == ["e1", "e2", "e3"]
    assert kept["e1"]["amount"] == 100 and kept["e1"]["source_file"] == "a.jsonl"
    assert result.duplicates == 1
    assert result.dead_letter["reason"].to_pylist() == ["conflicting_duplicate"]
    assert result.dead_letter["source_file"].to_pylist() == ["b.jsonl"]


def test_dedup_against_the_lake_keeps_the_lake_version():
    t = _tables([_ev("e1"), _ev("e2", amount=5)])
    sha = dict(zip(t["events"]["event_id"].to_pylist(), t["events"]["payload_sha256"].to_pylist(), strict=False))
    lake = {"e1": sha["e1"], "e2": "0" * 64}  # e2 in the lake with another payload
    result = dedup_shard(t["events"], empty_staging("usage"), empty_staging("dead_letter"),
                         lambda ids: {i: lake[i] for i in ids if i in lake}, lambda k: set())
    assert result.events.num_rows == 0
    assert result.duplicates == 1
    assert result.dead_letter["event_id"].to_pylist() == ["e2"]


def test_dedup_in_a_testpipeline():
    chunks = [_tables([_ev("e1"), _ev("e1")]), _tables([_ev("e2"), _ev("e1", amount=1)], 1, "g.jsonl")]

    def run(group):
        tables = list(group)
        ev = pa.concat_tables([t["events"] for t in tables])
        r = dedup_shard(ev, empty_staging("usage"), empty_staging("dead_letter"), lambda ids: {}, lambda k: set())
        return sorted(r.events["event_id"].to_pylist()), r.duplicates, r.dead_letter.num_rows

    with _pipeline() as p:
        out = (p | beam.Create(chunks) | beam.Map(lambda t: (0, t)) | beam.GroupByKey()
               | beam.Map(lambda kv: run(kv[1])))
        assert_that(out, equal_to([(["e1", "e2"], 1, 1)]))
