"""The month's tables as CSV and one XLSX, safe to open in a spreadsheet, written atomically.

Text cells that a spreadsheet would run as a formula (those beginning with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return: OWASP's CSV-injection advice) are written with a
leading apostrophe, so they are shown as text. Numbers stay numbers (Decimal, exact).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _frame(table: pa.Table):
    frame = table.to_pandas()  # DECIMAL -> Decimal objects: exact in CSV and XLSX
    for column, kind in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            frame[column] = frame[column].map(neutralise, na_action="ignore")
    return frame


def write_aside(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename into place: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_tables(tables: dict[str, pa.Table], out_dir: Path, xlsx_name: str) -> list[Path]:
    import pandas as pd

    frames = {name: _frame(table) for name, table in tables.items()}
    written = [write_aside(out_dir / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
               for name, frame in frames.items()]  # fmt: skip

    def write_xlsx(path: Path) -> None:
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            for name, frame in frames.items():
                frame.to_excel(writer, sheet_name=name[:31], index=False)

    written.append(write_aside(out_dir / xlsx_name, write_xlsx))
    return written
