"""A landing folder as a stream source: ``file:///PATH``.

Each new ``*.jsonl`` / ``*.jsonl.gz`` file anywhere under the folder is ingested once, whole, in
path order; the consumer never modifies or deletes it. Which files the lake holds is recorded in
the lake itself: every batch's commits carry one app transaction per file
(``stream:file:///PATH#<relative path>`` = 1), so a restart skips exactly those. Writers should
move complete files into the folder (write elsewhere or under a dot-name, then rename): a
file still being written when it is picked up would be ingested as it was at that moment.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pipelines import lake
from pipelines.layout import DataLayout
from transforms.errors import ConfigError

SETTLE_SECONDS = 1.0  # a file modified more recently than this waits for the next look


@dataclass(frozen=True)
class LandingFolder:
    path: Path

    @property
    def key(self) -> str:
        return "file://" + quote(str(self.path))

    def file_app_id(self, rel: str) -> str:
        return f"stream:{self.key}#{quote(rel)}"


def parse_file_uri(uri: str) -> LandingFolder:
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(f"{uri}: a landing folder is file:///ABSOLUTE/PATH")
    path = Path(unquote(parts.path))
    if not path.is_dir():
        raise ConfigError(f"{uri}: {path} is not a folder")
    return LandingFolder(path.resolve())


def candidate_files(folder: LandingFolder, now: float | None = None) -> list[str]:
    """Relative paths of the event files under the folder that have settled, in path order."""
    now = time.time() if now is None else now
    found = []
    for root, dirs, names in os.walk(folder.path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or not name.endswith((".jsonl", ".jsonl.gz")):
                continue
            full = Path(root) / name
            try:
                if now - full.stat().st_mtime < SETTLE_SECONDS:
                    continue
            except OSError:
                continue
            found.append(full.relative_to(folder.path).as_posix())
    return sorted(found)


def ingested_files(layout: DataLayout, folder: LandingFolder, rels: list[str]) -> set[str]:
    """Which of ``rels`` every ingest table's commits record (a kill between commits: not all)."""
    from pipelines.ingest import INGEST_TABLES

    tables = [lake.open_table(layout, t) for t in INGEST_TABLES]
    if any(t is None for t in tables):
        return set()
    return {rel for rel in rels if all(t.transaction_version(folder.file_app_id(rel)) for t in tables)}
