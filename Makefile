# Two commands on a fresh machine (Python 3.11, no GPU needed):
#   make demo   installs everything, starts Label Studio + the backend with the sample tickets pre-annotated
#   make test   installs everything (Chromium for the browser test too) and runs the test suite (it starts its own Label Studio)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install browser
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

demo: install
	$(PY) -m backend demo

browser:
	sh tests/setup_browser.sh

test: install browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
