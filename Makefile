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
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $(STAMP)

SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# Debian's chromium for the real-browser rendering test, and CJK fonts so its
# screenshots show the bulletin's text rather than empty boxes (and the PDF edition
# embeds them). Dovecot's IMAP server for the bounce mailbox tests (started by the
# tests from a throwaway config on a loopback port, never as a system service).
# LibreOffice (without its GUI) prints the tests' Word issues to PDF, as staff print
# them. WeasyPrint needs pango; pdftoppm (poppler-utils) turns the PDF's pages into
# images for the browser test's folder. qpdf puts a password on a printed PDF, as
# staff's PDF printers can.
SYSTEM_PACKAGES := chromium fonts-noto-cjk dovecot-imapd libreoffice-writer-nogui \
  libpango-1.0-0 libpangoft2-1.0-0 poppler-utils qpdf
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

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
