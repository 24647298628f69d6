# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   the gateway against simulated devices and a local broker, readings printed as they arrive
#   make test   the whole test suite (lint, unit, integration)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "could not create a virtual environment: sudo apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# mosquitto and socat are real parts of the tests and the demo.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v socat >/dev/null 2>&1 || missing="$$missing socat"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	  else \
	    echo "missing:$$missing -- install with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/gateway demo

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
