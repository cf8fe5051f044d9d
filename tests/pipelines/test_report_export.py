"""The report's workbook: exact values, text never run as a formula, memory bounded by a batch."""


def test_workbook_cells_keep_every_digit_of_a_decimal(tmp_path):
    """A decimal Excel's double would round is written as its text, never as a nearby number."""
    from decimal import Decimal

    import openpyxl
    import pyarrow as pa

    from pipelines.report.export import write_xlsx

    values = [Decimal("1234567890123.45"), Decimal("12345678901234567.89"), None, Decimal("-0.01")]
    path = tmp_path / "t.xlsx"
    write_xlsx({"t": pa.table({"v": pa.array(values, pa.decimal128(38, 2)), "s": ["=1+1", "+x", "ok", None]})}, path)
    got = list(openpyxl.load_workbook(path, read_only=True)["t"].iter_rows(values_only=True))
    assert got[0] == ("v", "s")
    assert Decimal(str(got[1][0])) == values[0] and isinstance(got[1][0], float | int)
    assert got[2][0] == "12345678901234567.89"  # 19 digits: text, exact
    assert got[3] == (None, "ok") and Decimal(str(got[4][0])) == values[3]
    assert got[1][1] == "'=1+1" and got[2][1] == "'+x"  # text that a spreadsheet would run: shown as text


HOSTILE_TEXT = ["=1+1", "+x", "-2", "@SUM(A1)", "\tlead", "\rlead", "a & b < c > d", "ctl\x01\x1f end", "\x00",
                "_x0041_ literal", "  spaces  ", "line\nbreak", "ünïcödé ✓", "", None, "x" * 40_000]


def _read_back(path):
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    return {name: list(book[name].iter_rows(values_only=True)) for name in book.sheetnames}


def _hostile_table():
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa

    n = len(HOSTILE_TEXT)
    return pa.table({
        "text": pa.array(HOSTILE_TEXT, pa.string()),
        "money": pa.array([Decimal("643.070000"), Decimal("-0.010000"), Decimal("0"), None,
                           Decimal("999999999.999999"), Decimal("1000000000.000000"), Decimal("5")] + [Decimal("1.5")] * (n - 7),
                          pa.decimal128(38, 6)),
        "count": pa.array([0, -1, 2**53 - 1, 2**53, -(2**53), None] + list(range(n - 6)), pa.int64()),
        "flag": pa.array([True, False, None] + [True] * (n - 3)),
        "day": pa.array([dt.date(2025, 12, 1), dt.date(1900, 2, 28), dt.date(1900, 3, 1), None] + [dt.date(2024, 2, 29)] * (n - 4)),
        "at": pa.array([dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=dt.UTC), None] + [dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)] * (n - 2),
                       pa.timestamp("us", "UTC")),
    })  # fmt: skip


def _per_cell_reference(tables, path):
    """The writer the report used before (xlsxwriter, one cell at a time): the reference for every cell."""
    import xlsxwriter

    from pipelines.report.export import EXACT_DIGITS, FORMULA_STARTS

    with xlsxwriter.Workbook(str(path), {"constant_memory": True, "strings_to_formulas": False,
                                         "strings_to_urls": False, "strings_to_numbers": False}) as book:  # fmt: skip
        date, stamp = book.add_format({"num_format": "yyyy-mm-dd"}), book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
        for name, table in tables.items():
            sheet = book.add_worksheet(name)
            sheet.write_row(0, 0, table.column_names)
            for r, row in enumerate(table.to_pylist(), start=1):
                for c, value in enumerate(row.values()):
                    if value is None:
                        continue
                    if isinstance(value, str):
                        sheet.write_string(r, c, "'" + value if value.startswith(FORMULA_STARTS) else value)
                    elif isinstance(value, bool):
                        sheet.write_boolean(r, c, value)
                    elif hasattr(value, "as_tuple"):
                        if len(value.as_tuple().digits) <= EXACT_DIGITS:
                            sheet.write_number(r, c, value)
                        else:
                            sheet.write_string(r, c, str(value))
                    elif isinstance(value, int):
                        sheet.write_number(r, c, value) if abs(value) < 2**53 else sheet.write_string(r, c, str(value))
                    elif hasattr(value, "tzinfo"):
                        sheet.write_datetime(r, c, value.replace(tzinfo=None), stamp)
                    else:
                        sheet.write_datetime(r, c, value, date)


def test_workbook_cells_equal_a_cell_by_cell_writer_on_hostile_values(tmp_path):
    """Rendering the sheets with Arrow gives the cells xlsxwriter gives one at a time: escaped markup,
    control characters, formula-like text, text past Excel's cell limit, exact and inexact numbers,
    booleans, dates on both sides of Excel's 1900 leap-year bug, timestamps."""
    from pipelines.report.export import write_xlsx

    tables = {"hostile": _hostile_table()}
    write_xlsx(tables, tmp_path / "new.xlsx")
    _per_cell_reference(tables, tmp_path / "old.xlsx")
    new, old = _read_back(tmp_path / "new.xlsx"), _read_back(tmp_path / "old.xlsx")
    assert new["hostile"][0] == old["hostile"][0]
    for got, want in zip(new["hostile"][1:], old["hostile"][1:], strict=True):
        assert got == want
    assert new["hostile"][16][0] == "x" * 32_767  # cut at Excel's cell limit, as xlsxwriter cuts it


def test_a_table_longer_than_a_sheet_continues_on_the_next(tmp_path, monkeypatch):
    """Excel's sheet holds 1,048,576 rows: a longer table goes on in ``name (2)``, header repeated, no row lost
    (xlsxwriter alone drops rows past the limit without a word)."""
    import pyarrow as pa

    from pipelines.report import export

    monkeypatch.setattr(export, "EXCEL_MAX_ROWS", 4)  # 3 data rows a sheet
    monkeypatch.setattr(export, "XLSX_BATCH_ROWS", 2)  # several batches a sheet, rendered on threads
    export.write_xlsx({"fct_mrr": pa.table({"n": list(range(8))}), "empty": pa.table({"e": pa.array([], pa.int64())})},
                      tmp_path / "t.xlsx")  # fmt: skip
    sheets = _read_back(tmp_path / "t.xlsx")
    assert list(sheets) == ["fct_mrr", "fct_mrr (2)", "fct_mrr (3)", "empty"]
    assert [r for name in ("fct_mrr", "fct_mrr (2)", "fct_mrr (3)") for r in sheets[name]] == [
        ("n",), (0,), (1,), (2,), ("n",), (3,), (4,), (5,), ("n",), (6,), (7,)]
    assert sheets["empty"] == [("e",)]


def test_csv_quotes_only_where_needed_and_keeps_text_as_text(tmp_path):
    import csv

    from pipelines.report.export import write_csv

    table = _hostile_table()
    write_csv(table, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == table.column_names
    texts = [r[0] for r in rows[1:]]
    assert texts[:6] == ["'=1+1", "'+x", "'-2", "'@SUM(A1)", "'\tlead", "'\rlead"]
    assert texts[6:13] == HOSTILE_TEXT[6:13] and texts[13] == texts[14] == ""  # empty text and null: empty
    assert [r[1] for r in rows[1:4]] == ["643.070000", "-0.010000", "0.000000"] and rows[4][1] == ""
    assert [r[3] for r in rows[1:4]] == ["True", "False", ""] and rows[1][2] == "0" and rows[6][2] == ""
    assert open(tmp_path / "t.csv", encoding="utf-8").readline() == ",".join(table.column_names) + "\n"
