"""The data directory's layout: the one owner of every path under ``DATA_DIR``.

::

    DATA_DIR/
      lake/<table>/_delta_log/                     a Delta table's versions (CONTRACT section 3)
      lake/<table>/<partition>=<value>/*.parquet   its data files (only those a version names count)
      lake/_staging/<run_id>/                      scratch files of a run in progress (never read as data;
                                                   derived-<run_id>/ for the metrics stage)
      lake/.lock, lake/.lock-derived               one writer at a time of the ingest tables, and of the
                                                   derived tables (a local lake; pipelines.lease)
      lake/_lease.json, lake/_lease-derived.json   the same on an object-store lake
      warehouse/revenue.duckdb                     the published warehouse
      warehouse/.build-<run_id>/                   a build in progress (removed by the next run if killed)
      runs/<run_id>-<command>.json                 one manifest per command run
      quality/                                     gate results and Data Docs (duckdb.tmp/: the gate's spill)
      reports/<YYYY-MM>/                           the monthly finance report and its tables
      secrets/redaction.key                        generated key for redaction when REVENUE_PII_KEY is unset

The lake can live elsewhere: ``lake_uri`` (``s3://bucket/prefix``) puts every ``lake/...`` entry
above under that prefix (``pipelines.store``). Lake data is then reached through ``store`` and the
``*_path`` / ``table_uri`` methods (filesystem paths and deltalake URIs), never through ``Path``;
the ``Path`` properties (``lake``, ``table``) name the local lake only.

No other module joins paths under the data directory: they ask this object.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.store import LakeStore

WAREHOUSE_NAME = "revenue.duckdb"
BUILD_PREFIX = ".build-"


# The lake's two writer scopes (pipelines.lease): the ingest tables (events, usage, dead_letter) and
# the derived tables the metrics stage writes; a writer holds one or both.
INGEST_SCOPE, DERIVED_SCOPE = "ingest", "derived"
SCOPES = (INGEST_SCOPE, DERIVED_SCOPE)


def staging_name(run_id: str, scope: str = INGEST_SCOPE) -> str:
    """The name of a run's scratch folder under ``_staging/`` for a writer scope."""
    return run_id if scope == INGEST_SCOPE else f"{scope}-{run_id}"


def staging_scope(name: str) -> str:
    """The writer scope a scratch folder's name belongs to (the inverse of ``staging_name``)."""
    return DERIVED_SCOPE if name.startswith(f"{DERIVED_SCOPE}-") else INGEST_SCOPE


@dataclass(frozen=True)
class DataLayout:
    root: Path
    lake_uri: str | None = None  # s3://bucket/prefix, or another local folder; None: DATA_DIR/lake

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        uri = self.lake_uri
        if uri and "://" not in uri or (uri or "").startswith("file://"):
            object.__setattr__(self, "lake_uri", str(Path(uri.removeprefix("file://")).absolute()))

    # ------------------------------------------------------------------ lake (any store)
    @property
    def store(self) -> LakeStore:
        return LakeStore(str(self.lake) if self.lake_is_local else self.lake_uri)

    @property
    def lake_is_local(self) -> bool:
        return self.lake_uri is None or "://" not in self.lake_uri

    @property
    def lake_location(self) -> str:
        """The lake's root as a user names it (a folder or an URI), for messages."""
        return self.lake_uri or str(self.lake)

    def table_path(self, name: str) -> str:
        """A table's root in the store's filesystem namespace."""
        return self.store.path(name)

    def table_uri(self, name: str) -> str:
        """A table's root as deltalake opens it."""
        return self.store.uri(self.table_path(name))

    @property
    def staging_root_path(self) -> str:
        return self.store.path("_staging")

    def staging_path(self, run_id: str, scope: str = INGEST_SCOPE) -> str:
        """A run's scratch folder, in the lake's store (workers on other machines share it). Each
        writer scope (``pipelines.lease``) has its own names, so a writer cleaning up what killed
        runs of its scope left never touches a running writer of the other: ``<run_id>`` for the
        ingest, ``derived-<run_id>`` for the metrics."""
        return self.store.path("_staging", staging_name(run_id, scope))

    @property
    def lease_path(self) -> str:
        return self.lease_path_for(INGEST_SCOPE)

    def lease_path_for(self, scope: str) -> str:
        return self.store.path("_lease.json" if scope == INGEST_SCOPE else f"_lease-{scope}.json")

    # ------------------------------------------------------------------ lake (local folder)
    @property
    def lake(self) -> Path:
        """The local lake folder (``DATA_DIR/lake`` unless ``lake_uri`` names another folder)."""
        return Path(self.lake_uri) if self.lake_uri and self.lake_is_local else self.root / "lake"

    def table(self, name: str) -> Path:
        return self.lake / name

    @property
    def lock_file(self) -> Path:
        return self.lock_file_for(INGEST_SCOPE)

    def lock_file_for(self, scope: str) -> Path:
        return self.lake / (".lock" if scope == INGEST_SCOPE else f".lock-{scope}")

    @property
    def staging_root(self) -> Path:
        return self.lake / "_staging"

    def staging(self, run_id: str, scope: str = INGEST_SCOPE) -> Path:
        return self.staging_root / staging_name(run_id, scope)

    # ------------------------------------------------------------------ warehouse
    @property
    def warehouse_dir(self) -> Path:
        return self.root / "warehouse"

    @property
    def warehouse(self) -> Path:
        return self.warehouse_dir / WAREHOUSE_NAME

    def build_dir(self, run_id: str) -> Path:
        return self.warehouse_dir / f"{BUILD_PREFIX}{run_id}"

    @property
    def dbt_workspace(self) -> Path:
        """Where every build runs dbt (project copy, target, build file): the same paths from one build
        to the next, so dbt parses only what changed (its partial parsing keys on them)."""
        return self.warehouse_dir / ".dbt"

    def stale_builds(self) -> list[Path]:
        d = self.warehouse_dir
        return sorted(p for p in d.glob(f"{BUILD_PREFIX}*") if p.is_dir()) if d.is_dir() else []

    def dbt_failure_log(self, run_id: str) -> Path:
        return self.warehouse_dir / f"dbt-build-failed-{run_id}.log"

    # ------------------------------------------------------------------ runs, quality, reports
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def manifest(self, run_id: str, command: str) -> Path:
        return self.runs_dir / f"{run_id}-{command}.json"

    def latest_manifest(self, command: str) -> dict | None:
        runs = sorted(self.runs_dir.glob(f"*-{command}.json")) if self.runs_dir.is_dir() else []
        return json.loads(runs[-1].read_text()) if runs else None

    @property
    def quality_dir(self) -> Path:
        return self.root / "quality"

    def quality_results(self, run_id: str | None) -> Path:
        return self.quality_dir / (f"results-{run_id}.json" if run_id else "results.json")

    @property
    def quality_spill_dir(self) -> Path:
        """Where the quality gate's DuckDB spills beyond its memory limit (``revenue validate``)."""
        return self.quality_dir / "duckdb.tmp"

    @property
    def quality_latest(self) -> Path:
        return self.quality_dir / "latest.json"

    @property
    def data_docs_index(self) -> Path:
        return self.quality_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def report_dir(self, month: dt.date) -> Path:
        return self.root / "reports" / f"{month:%Y-%m}"

    @property
    def redaction_key_file(self) -> Path:
        return self.root / "secrets" / "redaction.key"
