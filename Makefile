# Everything a fresh Debian machine with python3, pip and make needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint typecheck system-deps clean

$(BIN)/python:
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && \
	  rm -rf $(VENV) && $(PY) -m venv $(VENV); }

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# Debian's chromium for the real-browser rendering test.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check mailer tests bench

typecheck: $(STAMP)
	$(BIN)/mypy mailer

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m mailer.demo

bench: $(STAMP)
	$(BIN)/python bench/send_throughput.py

clean:
	rm -rf $(VENV) demo
