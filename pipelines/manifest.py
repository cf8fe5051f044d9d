"""Run manifests: one JSON file per command run under ``DATA_DIR/runs/``."""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib import metadata
from pathlib import Path

from pipelines.lake import write_atomic_bytes

PACKAGES = ("revenue-analytics", "apache-beam", "pyarrow", "duckdb", "dbt-core", "dbt-duckdb",
            "great-expectations", "pandas", "plotly")  # fmt: skip


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_manifest(data_dir: Path, run_id: str, command: str, body: dict) -> Path:
    path = Path(data_dir) / "runs" / f"{run_id}-{command}.json"
    doc = {
        "run_id": run_id,
        "command": command,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **body,
    }
    write_atomic_bytes(path, json.dumps(doc, indent=2, sort_keys=False, default=str).encode())
    return path
