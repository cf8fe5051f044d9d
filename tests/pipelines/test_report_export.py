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
