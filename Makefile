# Everything a fresh Debian machine with python3, pip and make needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := $(VENV)/wheels
# Test processes (pytest-xdist). Most of the suite's slow tests wait on real
# subprocesses, servers and the clock rather than the CPU, so more than the cores.
TEST_JOBS ?= 4

.PHONY: test demo bench faults lint typecheck system-deps clean

$(BIN)/python:
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv && \
	  rm -rf $(VENV) && $(PY) -m venv $(VENV); }

# The install also keeps wheels of the runtime dependencies and of the build backend
# (WHEELS): tests/test_package.py builds the wheel and installs it into a fresh venv
# from them with --no-index, instead of asking the index again on every run.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	rm -rf $(WHEELS)
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
	  print(*p["project"]["dependencies"], *p["build-system"]["requires"], sep="\n")' \
	  > $(VENV)/runtime-requirements.txt
	$(BIN)/python -m pip wheel -q --wheel-dir $(WHEELS) -r $(VENV)/runtime-requirements.txt
	touch $(WHEELS)/.complete
	touch $(STAMP)

SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# Debian's chromium for the real-browser rendering test, and CJK fonts so its
# screenshots show the bulletin's text rather than empty boxes (and the PDF edition
# embeds them). Dovecot's IMAP server for the bounce mailbox tests (started by the
# tests from a throwaway config on a loopback port, never as a system service).
# LibreOffice (without its GUI) prints the tests' Word issues to PDF, as staff print
# them. WeasyPrint needs pango; pdftoppm (poppler-utils) turns the PDF's pages into
# images for the browser test's folder. Postfix writes a real bounce in the tests
# from a throwaway config; preseeded "No configuration", installing it configures
# and starts no system mail service. qpdf puts a password on a printed PDF, as
# staff's PDF printers can.
SYSTEM_PACKAGES := chromium fonts-noto-cjk dovecot-imapd libreoffice-writer-nogui \
  libpango-1.0-0 libpangoft2-1.0-0 poppler-utils postfix qpdf
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:" $$missing; \
	  echo "postfix postfix/main_mailer_type select No configuration" | \
	    $(SUDO) debconf-set-selections; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check mailer tests bench

typecheck: $(STAMP)
	$(BIN)/mypy mailer

# The suite starts many Python processes. Where PYTHONDONTWRITEBYTECODE is set (some
# machines set it for everyone), each would compile mailer/ again and every test
# process would rewrite every test module's asserts again: about 30 s of CPU a run.
# Bytecode goes to __pycache__/, which git ignores.
test: $(STAMP) system-deps lint typecheck
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(TEST_JOBS) --dist worksteal

demo: $(STAMP)
	$(BIN)/python -m mailer.demo

bench: $(STAMP)
	$(BIN)/python bench/send_throughput.py

# The fault bench (kill -9, split replies, storms, a silent relay, hostile names…),
# a few minutes; never part of `make test`. FAULTS_ARGS="--quick" for a smoke run.
faults: $(STAMP)
	$(BIN)/python bench/faults.py $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) demo
