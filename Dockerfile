# The backend on a CUDA machine (an RTX 4090 in production): unsloth 4-bit LoRA scoring and fine-tuning.
# Build: docker build -t dept-router .   Run: see docker-compose.yml (Label Studio + this backend).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -r requirements.txt -r requirements-gpu.txt
ENV PATH=/opt/venv/bin:$PATH

COPY annotation_config ./annotation_config
COPY backend ./backend
COPY training ./training

# MODEL_DIR holds the label store, model versions and job logs: mount a volume there.
# BASE_MODEL must point at a local copy of the weights (no hub access is assumed), e.g. a mounted /models.
ENV MODEL_DIR=/data/models HOST=0.0.0.0 PORT=9090 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
RUN useradd --create-home --uid 1000 app && mkdir -p /data/models && chown -R app /data
USER app
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS http://127.0.0.1:9090/health || exit 1
# gunicorn, one worker process (it holds the model) with threads: see backend/__main__.py
CMD ["python", "-m", "backend", "serve"]
