"""Run manifests: one JSON file per command run under ``DATA_DIR/runs/``, and run ids."""

from __future__ import annotations

import datetime as dt
import json
import platform
import uuid
from importlib import metadata
from pathlib import Path

from pipelines.lake import write_atomic_bytes
from pipelines.layout import DataLayout

PACKAGES = ("revenue-analytics", "apache-beam", "pyarrow", "duckdb", "dbt-core", "dbt-duckdb",
            "great-expectations", "pandas", "plotly")  # fmt: skip


def new_run_id() -> str:
    """Sortable and unique: ``YYYYMMDDTHHMMSSZ-<8 hex>``."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_manifest(layout: DataLayout, run_id: str, command: str, body: dict) -> Path:
    path = layout.manifest(run_id, command)
    doc = {
        "run_id": run_id,
        "command": command,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **body,
    }
    write_atomic_bytes(path, json.dumps(doc, indent=2, sort_keys=False, default=str).encode())
    return path
