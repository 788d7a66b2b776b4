# Two commands do everything: `make serve` and `make test`. Each creates the virtual
# environment in .venv on first use (and again whenever pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench bench-long clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Missing Debian packages (OpenCV's libGL; for the tests, chromium and chromium-driver) are
# installed first, as root or with sudo.
serve: $(STAMP)
	scripts/system-deps.sh serve
	$(BIN)/python -m stream_server serve $(ARGS)

test: $(STAMP)
	scripts/system-deps.sh test
	$(BIN)/python -m pytest $(ARGS)

# the CPU benchmark set (about 12 minutes), then the README's performance section and plots
bench: $(STAMP)
	scripts/system-deps.sh serve
	$(BIN)/python -m benchmarks.run_all

# one 10-minute session: A/V drift, memory growth, latency trend
bench-long: $(STAMP)
	scripts/system-deps.sh serve
	$(BIN)/python -m benchmarks.long_run --minutes 10
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) tests/artifacts
