"""Print a content digest of every table in a warehouse (order-independent), to compare two builds.

    .venv/bin/python benchmarks/warehouse_digest.py data/warehouse/revenue.duckdb [--columns-of OTHER.duckdb]

Each line: table, rows, sha256 of its rows sorted (all columns, or only the columns it shares
with OTHER, so a build that adds a column can still be compared on the columns both have).
"""

from __future__ import annotations

import argparse
import hashlib

import duckdb


def columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "select column_name from information_schema.columns where table_name = ? order by ordinal_position",
        [table]).fetchall()]  # fmt: skip


def digest(path: str, other: str | None = None) -> dict[str, tuple[int, str, list[str]]]:
    con = duckdb.connect(path, read_only=True)
    ref = duckdb.connect(other, read_only=True) if other else None
    tables = [r[0] for r in con.execute(
        "select table_name from information_schema.tables where table_schema = 'main' order by 1").fetchall()]  # fmt: skip
    out = {}
    for table in tables:
        cols = columns(con, table)
        if ref is not None:
            theirs = set(columns(ref, table))
            cols = [c for c in cols if c in theirs]
        if not cols:
            continue
        quoted = ", ".join(f'"{c}"' for c in cols)
        rows = con.execute(f'select {quoted} from "{table}" order by all').fetchall()
        h = hashlib.sha256()
        for row in rows:
            h.update(repr(row).encode())
        out[table] = (len(rows), h.hexdigest()[:16], cols)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("warehouse")
    parser.add_argument("--columns-of", default=None, help="compare only the columns this other warehouse has")
    args = parser.parse_args()
    for table, (rows, sha, cols) in digest(args.warehouse, args.columns_of).items():
        print(f"{table:40s} {rows:8d} {sha} ({len(cols)} columns)")


if __name__ == "__main__":
    main()
