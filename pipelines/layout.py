"""The data directory's layout: the one owner of every path under ``DATA_DIR``.

::

    DATA_DIR/
      lake/<table>/<partition>=<value>/*.parquet   lake tables (CONTRACT section 3)
      lake/_index/ingest.sqlite                    accepted event ids and dead-letter keys
      lake/_staging/<run_id>/                      files a run in progress writes aside
      lake/_journal/<run_id>.json                  a commit in progress
      lake/.lock                                   one writer at a time
      warehouse/revenue.duckdb                     the published warehouse
      warehouse/.build-<run_id>/                   a build in progress (removed by the next run if killed)
      runs/<run_id>-<command>.json                 one manifest per command run
      quality/                                     gate results and Data Docs
      reports/<YYYY-MM>/                           the monthly finance report and its tables
      secrets/redaction.key                        generated key for redaction when REVENUE_PII_KEY is unset

No other module joins paths under the data directory: they ask this object.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from transforms import schemas

WAREHOUSE_NAME = "revenue.duckdb"
BUILD_PREFIX = ".build-"


@dataclass(frozen=True)
class DataLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    # ------------------------------------------------------------------ lake
    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def table(self, name: str) -> Path:
        return self.lake / name

    def table_glob(self, name: str) -> str:
        """Absolute glob for DuckDB/pyarrow readers: ``.../lake/<table>/*/*.parquet``."""
        return str(self.table(name).resolve() / "*" / "*.parquet")

    def table_files(self, name: str) -> list[Path]:
        root = self.table(name)
        return sorted(root.glob("*/*.parquet")) if root.is_dir() else []

    def has_files(self, name: str) -> bool:
        root = self.table(name)
        return root.is_dir() and any(root.glob("*/*.parquet"))

    def partitions(self, name: str) -> dict[str, list[Path]]:
        """``{partition value: its data files}`` of a hive-partitioned lake table (non-empty partitions only)."""
        column = schemas.PARTITION_COLUMNS[name][0]
        root = self.table(name)
        out: dict[str, list[Path]] = {}
        if not root.is_dir():
            return out
        for part in sorted(root.iterdir()):
            if part.is_dir() and part.name.startswith(f"{column}="):
                files = sorted(part.glob("*.parquet"))
                if files:
                    out[part.name.split("=", 1)[1]] = files
        return out

    def day_partitions(self, name: str) -> dict[dt.date, list[Path]]:
        return {dt.date.fromisoformat(k): v for k, v in self.partitions(name).items()}

    @property
    def index_file(self) -> Path:
        return self.lake / "_index" / "ingest.sqlite"

    @property
    def lock_file(self) -> Path:
        return self.lake / ".lock"

    @property
    def journal_dir(self) -> Path:
        return self.lake / "_journal"

    def journal(self, run_id: str) -> Path:
        return self.journal_dir / f"{run_id}.json"

    @property
    def staging_root(self) -> Path:
        return self.lake / "_staging"

    def staging(self, run_id: str) -> Path:
        return self.staging_root / run_id

    # ------------------------------------------------------------------ warehouse
    @property
    def warehouse_dir(self) -> Path:
        return self.root / "warehouse"

    @property
    def warehouse(self) -> Path:
        return self.warehouse_dir / WAREHOUSE_NAME

    def build_dir(self, run_id: str) -> Path:
        return self.warehouse_dir / f"{BUILD_PREFIX}{run_id}"

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
