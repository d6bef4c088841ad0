# Two commands on a fresh machine (Python 3.11, no GPU needed):
#   make demo   installs everything, starts Label Studio + the backend with the sample tickets pre-annotated
#   make test   installs everything and runs the test suite (it starts its own Label Studio)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install container-tools
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

demo: install
	$(PY) -m backend demo

test: install container-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# What tests/test_container.py builds and runs the image with where no Docker engine runs (Debian, as root). Where
# they cannot be installed, that test is skipped and says why; the rest of the suite runs all the same.
CONTAINER_TOOLS := buildah podman runc mmdebstrap
container-tools:
	@missing=$$(for tool in $(CONTAINER_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CONTAINER_TOOLS) >/dev/null) \
		|| echo "container-tools: apt-get could not install" $$missing "- the container test will be skipped"; \
	else echo "container-tools: missing" $$missing "(installed by root with apt-get) - the container test will be skipped"; fi
