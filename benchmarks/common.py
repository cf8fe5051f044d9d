"""Benchmark helpers: run a step in a fresh Python process, report wall time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(code: str) -> dict:
    """Run ``code`` in a new interpreter; it must set ``result`` (a dict). Adds seconds, cpu_seconds, peak_rss_mb."""
    wrapper = textwrap.dedent("""
        import json, resource, sys, time
        sys.path.insert(0, {repo!r})
        start = time.perf_counter()
        result = {{}}
        exec(compile({code!r}, "bench", "exec"))
        result["seconds"] = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        # CPU time (user + system, all threads): less sensitive than wall time to other jobs on the machine
        result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
        print("BENCH" + json.dumps(result, default=str))
    """).format(repo=str(REPO), code=textwrap.dedent(code))
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")][-1]
    return json.loads(line[5:])


def ensure_generated(out: Path, customers: int, months: int = 24, seed: int = 1) -> dict:
    truth_file = out / "ground_truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        if truth["customers"] == customers and truth["seed"] == seed:
            return truth
    from pipelines.generate import generate

    return generate(out, customers=customers, months=months, seed=seed, bad_rate=0.01)
