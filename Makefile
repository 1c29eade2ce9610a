# ccnet — the two commands: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/ccnet.ini
TRIAL_ARGS ?= tests

.PHONY: run test lint clean pki deps bench soak

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# System tools the tests use (ping and rrdtool for the mPlane probes, openssl for CMS interop,
# systemd tools for unit checks and socket activation). Installed when missing, as root.
deps:
	@bash scripts/system-deps.sh

pki: $(STAMP)
	@bash pki/make-dev-pki.sh pki/dev

run: $(STAMP) pki
	mkdir -p var
	$(BIN)/twistd -n --pidfile= ccnet --config $(CONFIG)

test: $(STAMP) deps
	$(BIN)/python tests/run_suite.py $(TRIAL_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ccnet tests bench twisted
	$(BIN)/mypy ccnet

bench: $(STAMP)
	@for b in bench/*_bench.py; do echo "== $$b"; $(BIN)/python $$b; done

soak: $(STAMP)
	CCNET_SOAK=1 $(BIN)/python tests/run_suite.py tests

clean:
	rm -rf $(VENV) _trial_temp* var build dist *.egg-info .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
