"""The month's tables as CSV and one XLSX, safe to open in a spreadsheet, written atomically.

Text cells that a spreadsheet would run as a formula (those beginning with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return: OWASP's CSV-injection advice) are written with a
leading apostrophe, so they are shown as text. Numbers stay numbers (Decimal, exact).

Both files are rendered column by column with Arrow compute, not cell by cell in Python: the
month's tables hold a row per customer, and at 150,000 customers a per-cell writer spent most of
a run's report stage (about 19 s) on them. xlsxwriter still writes the workbook's package (sheets,
header rows, styles, metadata); only the sheets' data rows are rendered here, as SpreadsheetML
``<row>`` elements (ECMA-376 part 1, 18.3.1), and placed into each sheet's ``<sheetData>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
XLSX_BATCH_ROWS = 50_000  # rows rendered at a time: memory follows this, not the table
EXACT_DIGITS = 15  # a decimal with at most this many significant digits survives Excel's double unchanged
ZIP_LEVEL = 1  # deflate's fastest level: the sheets' XML still shrinks about tenfold
EXCEL_MAX_ROWS = 1_048_576  # rows per sheet, the header included: a longer table continues on another sheet
EXCEL_MAX_TEXT = 32_767  # characters per cell (Excel's limit; longer text is cut, as xlsxwriter does)
EXCEL_DAY_1970 = 25_569  # the serial number of 1970-01-01 in Excel's 1900 date system
EXCEL_MARCH_1900 = -25_508  # 1900-03-01 in days since 1970: before it Excel counts a 29 Feb 1900 that never was
CONTROL = "".join(chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20)])  # not allowed in XML 1.0 text


def neutralise(values: pa.Array) -> pa.Array:
    """Text a spreadsheet would run as a formula, with a leading apostrophe (shown as text)."""
    risky = pc.starts_with(values, FORMULA_STARTS[0])
    for start in FORMULA_STARTS[1:]:
        risky = pc.or_(risky, pc.starts_with(values, start))
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


def write_aside(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename into place: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _csv_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if _is_text(column.type):
        return neutralise(column)
    if pa.types.is_boolean(column.type):  # True/False, as the report has always written them
        return pc.if_else(column, "True", "False")
    return column


def write_csv(table: pa.Table, path: Path, con=None) -> None:
    """One table as CSV (DuckDB's writer, on ``con`` or a connection of its own): a header of the column
    names, values quoted only where needed, a null as an empty field (an empty text as ``""``), decimals
    as their exact text, dates as ISO dates."""
    import duckdb

    body = pa.table([_csv_column(table.column(i)) for i in range(table.num_columns)], names=table.column_names)
    with duckdb.connect() if con is None else contextlib.nullcontext(con) as duck:
        duck.register("export", body)
        try:
            duck.execute("copy export to ? (format csv, header true, delimiter ',')", [str(path)])
        finally:
            duck.unregister("export")


def column_letters(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _join(*parts) -> pa.Array:
    """Element-wise concatenation; null where any part is null (an empty cell)."""
    return pc.binary_join_element_wise(*parts, "")


def _inline_text(values: pa.Array) -> pa.Array:
    """Text as the content of an inline string: cut at Excel's limit, XML-escaped, control characters as
    ``_xHHHH_`` (and a literal ``_xHHHH_`` kept literal), the way xlsxwriter escapes them."""
    def some(pattern: str) -> bool:  # most columns hold none of what needs escaping: check before rewriting
        return bool(pc.any(pc.match_substring_regex(values, pattern)).as_py())

    if (pc.max(pc.utf8_length(values)).as_py() or 0) > EXCEL_MAX_TEXT:
        values = pc.utf8_slice_codeunits(values, 0, EXCEL_MAX_TEXT)
    if some("_x[0-9a-fA-F]{4}_"):
        values = pc.replace_substring_regex(values, "(_x[0-9a-fA-F]{4}_)", r"_x005F\1")
    if some("[\\x00-\\x08\\x0b-\\x1f]"):
        for char in CONTROL:
            values = pc.replace_substring(values, char, f"_x{ord(char):04X}_")
    if some("[&<>]"):
        for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
            values = pc.replace_substring(values, char, entity)
    return values


def _digit_count(text: pa.Array) -> pa.Array:
    """Significant digits of a decimal's text: its unscaled integer's digits (trailing zeros of the scale
    count, as Python's ``Decimal.as_tuple()`` counts them; zero has one)."""
    digits = pc.utf8_ltrim(pc.replace_substring(pc.replace_substring(text, "-", ""), ".", ""), "0")
    return pc.max_element_wise(pc.utf8_length(digits), 1)


def _plain_number(text: pa.Array) -> pa.Array:
    """A decimal's text without the scale's trailing zeros: 643.070000 -> 643.07, 5.000000 -> 5."""
    text = pc.replace_substring_regex(text, r"(\.[0-9]*[1-9])0+$", r"\1")
    return pc.replace_substring_regex(text, r"\.0+$", "")


class _Styles:
    def __init__(self, date: int, timestamp: int):
        self.date, self.timestamp = date, timestamp


def _either(condition: pa.Array, when_true, when_false) -> pa.Array:
    """``if_else`` that renders only the side some row needs (nulls in ``condition``: null cells)."""
    if pc.all(condition).as_py() is not False:
        return when_true()
    return pc.if_else(condition, when_true(), when_false())


def _excel_serial(days: pa.Array) -> pa.Array:
    """Days since 1970-01-01 (whole, or with the time of day as a fraction) as Excel's serial numbers."""
    return pc.add(days, pc.if_else(pc.less(days, EXCEL_MARCH_1900), EXCEL_DAY_1970 - 1, EXCEL_DAY_1970))


def _cells(column: pa.Array, ref: pa.Array, styles: _Styles) -> pa.Array:
    """One column's cells as SpreadsheetML ``<c>`` elements (null: no element). ``ref``: each row's cell
    reference (``B17``). Numbers that Excel's double keeps exactly are numbers; others are their exact text."""
    kind = column.type

    def number(text, style=""):
        return _join('<c r="', ref, f'"{style}><v>', text, "</v></c>")

    def text_cell(text):
        return _join('<c r="', ref, '" t="inlineStr"><is><t xml:space="preserve">', _inline_text(text), "</t></is></c>")

    if pa.types.is_decimal(kind):
        text = pc.cast(column, pa.string())
        exact = pc.less_equal(_digit_count(text), EXACT_DIGITS)
        return _either(exact, lambda: number(_plain_number(text)), lambda: text_cell(text))
    if pa.types.is_integer(kind):
        text = pc.cast(column, pa.string())
        if kind.bit_width < 54:
            return number(text)
        exact = pc.less(column, 2**53)
        if pa.types.is_signed_integer(kind):
            exact = pc.and_(exact, pc.greater(column, -(2**53)))
        return _either(exact, lambda: number(text), lambda: text_cell(text))
    if pa.types.is_boolean(kind):
        return _join('<c r="', ref, '" t="b"><v>', pc.if_else(column, "1", "0"), "</v></c>")
    if pa.types.is_floating(kind):
        return number(pc.cast(column, pa.string()))
    if pa.types.is_date(kind):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32()).cast(pa.int64())
        return number(pc.cast(_excel_serial(days), pa.string()), f' s="{styles.date}"')
    if pa.types.is_timestamp(kind):  # Excel has no time zones: the UTC wall time, labelled in the format
        micros = pc.cast(pc.cast(column, pa.timestamp("us", kind.tz)), pa.int64())
        days = pc.divide(pc.cast(micros, pa.float64()), 86_400_000_000.0)
        return number(pc.cast(_excel_serial(days), pa.string()), f' s="{styles.timestamp}"')
    return text_cell(neutralise(pc.cast(column, pa.string())))


def _render_rows(batch: pa.RecordBatch, row: int, styles: _Styles) -> bytes:
    """A batch's rows as SpreadsheetML ``<row>`` elements, the first at sheet row ``row`` (1-based)."""
    numbers = pc.cast(pa.array(range(row, row + batch.num_rows), pa.int64()), pa.string())
    cells = [pc.fill_null(_cells(batch.column(i), _join(column_letters(i), numbers), styles), "")
             for i in range(batch.num_columns)]  # fmt: skip
    rows = _join('<row r="', numbers, '">', *cells, "</row>")
    return "".join(rows.to_pylist()).encode("utf-8")


def _sheet_rows(table: pa.Table, first_row: int, styles: _Styles):
    """The table's rows, rendered a batch at a time on two threads (Arrow's kernels and zlib release the
    GIL) while the caller compresses the batch before. At most three batches are in memory."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    batches, row = [], first_row
    for batch in table.to_batches(XLSX_BATCH_ROWS):
        if batch.num_rows:
            batches.append((batch, row))
            row += batch.num_rows
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="xlsx-rows") as pool:
        pending = deque()
        for batch, start in batches:
            pending.append(pool.submit(_render_rows, batch, start, styles))
            if len(pending) > 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _sheet_parts(tables: dict[str, pa.Table]) -> list[tuple[str, pa.Table]]:
    """(sheet name, rows) in order; a table longer than a sheet continues on sheets named ``name (2)``..."""
    parts, per_sheet = [], EXCEL_MAX_ROWS - 1
    for name, table in tables.items():
        pieces = max(1, -(-table.num_rows // per_sheet))
        for k in range(pieces):
            label = name[:31] if k == 0 else f"{name[:31 - len(f' ({k + 1})')]} ({k + 1})"
            parts.append((label, table.slice(k * per_sheet, per_sheet)))
    return parts


def write_xlsx(tables: dict[str, pa.Table], path: Path) -> None:
    """One sheet per table (a table longer than Excel's sheet continues on the next), a bold header row,
    dates and timestamps formatted as such. Strings are never read as formulas, URLs or numbers."""
    import xlsxwriter

    parts = _sheet_parts(tables)
    skeleton = path.with_name(f".{path.name}.skeleton")
    try:
        with xlsxwriter.Workbook(str(skeleton), {"strings_to_formulas": False, "strings_to_urls": False,
                                                 "strings_to_numbers": False}) as book:  # fmt: skip
            date = book.add_format({"num_format": "yyyy-mm-dd"})
            timestamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss \\U\\T\\C"})
            header = book.add_format({"bold": True})
            for name, table in parts:
                sheet = book.add_worksheet(name)
                for col, (column, kind) in enumerate(zip(table.column_names, table.schema.types, strict=True)):
                    sheet.write_string(0, col, column, header)
                    if pa.types.is_date(kind):
                        sheet.set_column(col, col, 11, date)  # also registers the format in the styles
                    elif pa.types.is_timestamp(kind):
                        sheet.set_column(col, col, 24, timestamp)
        styles = _Styles(date.xf_index, timestamp.xf_index)
        _fill_sheets(skeleton, path, parts, styles)
    finally:
        skeleton.unlink(missing_ok=True)


def _fill_sheets(skeleton: Path, path: Path, parts: list[tuple[str, pa.Table]], styles: _Styles) -> None:
    """Copy the skeleton package to ``path``, each sheet with its data rows after the header row."""
    sheets = {f"xl/worksheets/sheet{i}.xml": table for i, (_, table) in enumerate(parts, start=1)}
    with (zipfile.ZipFile(skeleton) as source,
          zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as target):
        for info in source.infolist():
            data = source.read(info.filename)
            table = sheets.get(info.filename)
            if table is None or table.num_rows == 0:
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
                continue
            xml = data.decode("utf-8")
            last = f"{column_letters(max(table.num_columns, 1) - 1)}{table.num_rows + 1}"
            xml, found = re.subn(r'<dimension ref="[^"]*"/>', f'<dimension ref="A1:{last}"/>', xml, count=1)
            head, sep, tail = xml.partition("</sheetData>")
            if not found or not sep:
                raise RuntimeError(f"unexpected worksheet XML in {info.filename}")
            entry = zipfile.ZipInfo(info.filename, info.date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED
            # the level ZipFile.open(str) would set; a ZipInfo made here has none (3.13 renamed the slot)
            setattr(entry, "compress_level" if hasattr(entry, "compress_level") else "_compresslevel", ZIP_LEVEL)
            with target.open(entry, "w", force_zip64=True) as out:
                out.write(head.encode("utf-8"))
                for chunk in _sheet_rows(table, 2, styles):
                    out.write(chunk)
                out.write((sep + tail).encode("utf-8"))


def export_tables(tables: dict[str, pa.Table], out_dir: Path, xlsx_name: str) -> list[Path]:
    """Every table as CSV, and all of them in one XLSX; the workbook is written on a thread of its own
    meanwhile (its time is zlib's, which releases the GIL, as DuckDB's CSV writer does)."""
    from concurrent.futures import ThreadPoolExecutor

    import duckdb

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlsx") as pool:
        workbook = pool.submit(write_aside, out_dir / xlsx_name, lambda p: write_xlsx(tables, p))
        with duckdb.connect() as con:  # one in-memory database writes every CSV
            written = [write_aside(out_dir / f"{name}.csv", lambda p, t=table: write_csv(t, p, con))
                       for name, table in tables.items()]  # fmt: skip
        written.append(workbook.result())
    return written
