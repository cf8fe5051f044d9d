"""Runnable pipelines, the CLI and run manifests. Logic lives in ``transforms``."""
