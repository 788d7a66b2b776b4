# Two commands do everything: `make serve` and `make test`. Each creates the virtual
# environment in .venv on first use (and again whenever pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m stream_server serve $(ARGS)

# The browser tests need Debian's chromium and chromium-driver, ffmpeg is handy: installed
# when missing (as root, or with sudo).
system-deps:
	scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.passthrough_loopback

clean:
	rm -rf $(VENV) tests/artifacts
