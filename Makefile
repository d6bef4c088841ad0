# Two commands on a fresh machine (Python 3.11, no GPU needed):
#   make demo   installs everything, starts Label Studio + the backend with the sample tickets pre-annotated
#   make test   installs everything (Debian packages too: Chromium, PostgreSQL, Redis, buildah) and runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install system-packages
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

demo: install
	$(PY) -m backend demo

# Chromium, PostgreSQL, Redis and the container tools the tests start (tests/setup_system.sh); never fails the build.
system-packages:
	sh tests/setup_system.sh

test: install system-packages
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
