"""`revenue maintain`: keep the Delta lake small and fast to open.

Per table: compact small files into larger ones (a lake fed by many small batches keeps a bounded
number of files per partition), write a checkpoint (readers replay fewer log files), and vacuum
files that no version within the retention needs, including files of runs killed before their
commit. Versions older than the retention stop being readable (time travel ends there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pipelines import lake
from pipelines.config import RunConfig
from pipelines.manifest import new_run_id, write_manifest
from transforms import schemas

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 7 * 24


@dataclass
class MaintainResult:
    run_id: str
    tables: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def versions_seen_by_closes(layout) -> dict[str, list[int]]:
    """Each table's versions recorded by a close (``period_closes.lake_versions``), oldest first."""
    import json

    keep: dict[str, set[int]] = {}
    for row in lake.read_table(layout, "period_closes", ["action", "lake_versions"]).to_pylist():
        if row["action"] == "close":
            for table, version in json.loads(row["lake_versions"]).items():
                keep.setdefault(table, set()).add(version)
    return {table: sorted(versions) for table, versions in keep.items()}


def run_maintain(config: RunConfig, retention_hours: int = DEFAULT_RETENTION_HOURS) -> MaintainResult:
    started = time.monotonic()
    layout = config.layout
    result = MaintainResult(new_run_id())
    with lake.lake_lock(layout):  # no run writes meanwhile, so no running commit's files can be vacuumed
        keep = versions_seen_by_closes(layout)  # closes count the events they did not see: keep what they saw
        for table in schemas.LAKE_SCHEMAS:
            if lake.open_table(layout, table) is None:
                continue
            compacted = lake.compact_small_files(layout, table, result.run_id)  # checkpoints when it merged
            delta = lake.open_table(layout, table)
            if not compacted:
                delta.create_checkpoint()
            removed = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False,
                                   full=True, keep_versions=keep.get(table) or None)  # fmt: skip
            result.tables[table] = {
                "version": delta.version(),
                "files_compacted": compacted.get("files_removed", 0),
                "files_written": compacted.get("files_added", 0),
                "files_vacuumed": len(removed),
                "versions_kept_for_closes": keep.get(table, []),
            }
    result.seconds = round(time.monotonic() - started, 3)
    write_manifest(layout, result.run_id, "maintain", {"retention_hours": retention_hours, "tables": result.tables,
                                                       "seconds": result.seconds})  # fmt: skip
    return result
