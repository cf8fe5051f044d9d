"""--materiality: when a restatement of a closed month is flagged (fast, no pipeline)."""

from decimal import Decimal

import pytest

from pipelines.config import Materiality, check_materiality
from pipelines.summary import restatement_lines
from transforms.errors import ConfigError

D = Decimal


@pytest.mark.parametrize(("metric", "reported", "restated", "material"), [
    ("mrr", "150", "180", True),               # 20 % of the reported value
    ("mrr", "100000", "100500", False),        # 0.5 % and below 1,000
    ("mrr", "1000000", "1001000", True),       # 0.1 %, but 1,000 in the reporting currency
    ("net_revenue", "0", "0.01", True),        # any change from a reported 0
    ("active_customers", "2000", "2010", False),  # counts: only the fraction applies
    ("active_customers", "50", "51", True),
    ("mrr", "150", "150", False),
])  # fmt: skip
def test_materiality_defaults(metric, reported, restated, material):
    assert Materiality().is_material(metric, D(reported), D(restated)) is material


def test_materiality_flag_is_validated():
    assert check_materiality("25", "0.5") == Materiality(D("25"), D("0.5"))
    for bad in (("x", "0.1"), ("-1", "0.1"), ("10", "1.5"), ("nan", "0.1")):
        with pytest.raises(ConfigError, match="--materiality"):
            check_materiality(*bad)


def test_summary_lines_mark_material_restatements():
    lines = restatement_lines({"reporting_currency": "JPY", "booked_in_month": "2025-03", "material": [{}],
                               "restated": [{"month": "2025-02", "metric": "mrr", "reported": "1500", "restated": "1800",
                                             "difference": "300", "events": 1, "material": True}]})  # fmt: skip
    assert lines[0].startswith("restatements of closed months: 1 rows (1 material), booked in 2025-03")
    assert lines[1] == ("MATERIAL restatement: 2025-02 mrr reported 1,500 JPY, restated 1,800 JPY, difference 300 JPY "
                        "(1 events since the close)")  # fmt: skip
