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


XLSX_BATCH_ROWS = 50_000  # rows converted to Python values at a time: memory follows this, not the table
EXACT_DIGITS = 15  # a decimal with at most this many significant digits survives Excel's double unchanged


def _xlsx_column_writer(sheet, kind: pa.DataType, formats: dict):
    """How one column's values go into cells, chosen once per column from its Arrow type."""
    if pa.types.is_decimal(kind) or pa.types.is_integer(kind):
        exact = ((lambda v: len(v.as_tuple().digits) <= EXACT_DIGITS) if pa.types.is_decimal(kind)
                 else (lambda v: abs(v) < 2**53))  # fmt: skip

        def write(row, col, value):  # a number when Excel's double keeps every digit, else its exact text
            if exact(value):
                sheet.write_number(row, col, value)
            else:
                sheet.write_string(row, col, str(value))
    elif pa.types.is_boolean(kind):
        write = sheet.write_boolean
    elif pa.types.is_floating(kind):
        write = sheet.write_number
    elif pa.types.is_timestamp(kind):
        def write(row, col, value):  # Excel has no time zones: the UTC wall time, labelled in the format
            sheet.write_datetime(row, col, value.replace(tzinfo=None), formats["timestamp"])
    elif pa.types.is_date(kind):
        def write(row, col, value):
            sheet.write_datetime(row, col, value, formats["date"])
    else:
        def write(row, col, value):
            sheet.write_string(row, col, neutralise(str(value)))
    return write


def write_xlsx(tables: dict[str, pa.Table], path: Path) -> None:
    """One sheet per table, streamed to disk row by row (xlsxwriter's constant-memory mode): memory does
    not grow with the table. Strings are never read as formulas, URLs or numbers."""
    import xlsxwriter

    options = {"constant_memory": True, "strings_to_formulas": False, "strings_to_urls": False,
               "strings_to_numbers": False}  # fmt: skip
    with xlsxwriter.Workbook(str(path), options) as book:
        formats = {"date": book.add_format({"num_format": "yyyy-mm-dd"}),
                   "timestamp": book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss \\U\\T\\C"}),
                   "header": book.add_format({"bold": True})}  # fmt: skip
        for name, table in tables.items():
            sheet = book.add_worksheet(name[:31])
            for col, column in enumerate(table.column_names):
                sheet.write_string(0, col, column, formats["header"])
            writers = [_xlsx_column_writer(sheet, kind, formats) for kind in table.schema.types]
            row = 1
            for batch in table.to_batches(XLSX_BATCH_ROWS):
                columns = [c.to_pylist() for c in batch.columns]
                for values in zip(*columns, strict=True):
                    for col, value in enumerate(values):
                        if value is not None:
                            writers[col](row, col, value)
                    row += 1


def export_tables(tables: dict[str, pa.Table], out_dir: Path, xlsx_name: str) -> list[Path]:
    written = [write_aside(out_dir / f"{name}.csv", lambda p, t=table: _frame(t).to_csv(p, index=False))
               for name, table in tables.items()]  # fmt: skip
    written.append(write_aside(out_dir / xlsx_name, lambda p: write_xlsx(tables, p)))
    return written
