# Everything runs inside .venv/ at the repository root, installed from constraints.txt.
PY := .venv/bin/python
PIP := .venv/bin/pip
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: venv run test lint clean browser

.venv/.installed: setup.py constraints.txt
	test -x $(PY) || python3 -m venv .venv
	@# uv (pinned in constraints.txt) installs the same pinned versions as pip, in ~45 s instead of ~90;
	@# compiled to bytecode as pip does, so the first processes that import them do not compile them
	$(PIP) install --quiet -c constraints.txt uv
	.venv/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e ".[test]"
	touch .venv/.installed

venv: .venv/.installed

run: venv
	.venv/bin/revenue run

lint: venv
	.venv/bin/ruff check pipelines transforms tests benchmarks

# The report test drives Debian's headless Chromium; this is the one place that installs it.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null || { echo "chromium is needed for the report test (Debian: apt-get install chromium)"; exit 1; }

test: venv lint browser
	.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25

clean:
	rm -rf data/lake data/warehouse data/reports data/quality data/runs dbt_project/target dbt_project/logs
