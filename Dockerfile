# The backend's image. By default the production one: a CUDA machine (an RTX 4090), unsloth 4-bit LoRA scoring and
# fine-tuning. Any Debian or Ubuntu base that packages Python 3.11 builds it (README, "Container"):
#   docker build -t dept-router .              then docker-compose.yml runs it beside Label Studio
#   python -m tools.container build            here, without a Docker engine or registry: buildah, from a Debian 12
#                                              base made from Debian's packages, without the GPU extras
# tests/test_container.py builds it that way and serves the sample tickets from it.
# Ubuntu 22.04 rather than 24.04: 24.04 packages only Python 3.12, and every test runs on 3.11.
ARG BASE_IMAGE=docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

# unsloth & co. need CUDA: an image for a CPU machine sets this empty (the LLM then runs through plain transformers).
ARG EXTRA_REQUIREMENTS=requirements-gpu.txt
# A UID that no base image hands out (Ubuntu 24.04's `ubuntu` user holds 1000); a bind-mounted MODEL_DIR must be
# writable by it.
ARG APP_UID=10001

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc and the Python headers: triton compiles its CUDA launcher on first use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
# Wheels only, so no compiler toolchain is needed to build. The PIP_* build args, unset by default, pass a build
# machine's own pip sources (local wheel folders, an index mirror, a proxy's CA) mounted into the build:
# `python -m tools.container build` forwards this machine's, so torch comes from local disk.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN --mount=type=cache,target=/root/.cache/pip \
    python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: -r requirements.txt ${EXTRA_REQUIREMENTS:+-r "$EXTRA_REQUIREMENTS"}
ENV PATH=/opt/venv/bin:$PATH

# .dockerignore lets only the Python packages through (no venvs, var/, models/, tests).
COPY . ./

# MODEL_DIR holds the label store, model versions and job logs: mount a volume there.
# BASE_MODEL must point at a local copy of the weights (no hub access is assumed), e.g. a mounted /models.
ENV MODEL_DIR=/data/models HOST=0.0.0.0 PORT=9090 HOME=/home/app HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
RUN useradd --create-home --home-dir /home/app --uid ${APP_UID} --user-group app \
 && mkdir -p /data/models && chown -R app:app /data
USER app
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=2)"
# gunicorn, one worker process (it holds the model) with threads: see backend/__main__.py
CMD ["python", "-m", "backend", "serve"]
