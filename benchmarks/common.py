"""Benchmark helpers: run a step in a fresh Python process, report wall time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(code: str) -> dict:
    """Run ``code`` in a new interpreter; it must set ``result`` (a dict). Adds seconds, cpu_seconds, peak_rss_mb
    (this process) and peak_tree_rss_mb (with its child processes, summed; sampled)."""
    wrapper = textwrap.dedent("""
        import json, os, resource, sys, threading, time
        sys.path.insert(0, {repo!r})

        def tree_rss_mb(pid):  # this process and its descendants (e.g. Beam worker processes), summed
            total = 0
            try:
                total = int(open(f"/proc/{{pid}}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                for task in os.listdir(f"/proc/{{pid}}/task"):
                    for child in open(f"/proc/{{pid}}/task/{{task}}/children").read().split():
                        total += tree_rss_mb(int(child))
            except OSError:
                pass
            return total

        peak_tree, done = [0.0], threading.Event()

        def sample():
            while not done.wait(0.2):
                peak_tree[0] = max(peak_tree[0], tree_rss_mb(os.getpid()))

        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()
        result = {{}}
        exec(compile({code!r}, "bench", "exec"))
        result["seconds"] = time.perf_counter() - start
        done.set()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        result["peak_tree_rss_mb"] = peak_tree[0]  # sampled every 0.2 s: sums the processes alive together
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
