# The pipeline's Prefect worker: this project installed in /app, run by a process worker.
# Build from the repository root (infra/compose/compose.yaml does):
#   docker build -f infra/docker/worker.Dockerfile -t unsir-worker:local .
# The same image serves the Kubernetes pool (infra/kubernetes/): push it and name it there.
FROM python:3.11-slim

# git: provenance records the commit, and DVC's project lives in this git repository.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    UNSIR_PROJECT_DIR=/app \
    UNSIR_PROGRESS=0

RUN useradd --create-home --uid 1000 unsir
WORKDIR /app

# Dependencies first, so that a code change does not reinstall torch. The Linux torch wheels
# on PyPI carry CUDA: the one image runs on a CPU or, given a GPU, on CUDA.
COPY --chown=unsir:unsir pyproject.toml README.md LICENSE ./
COPY --chown=unsir:unsir unsir/__init__.py unsir/__init__.py
COPY --chown=unsir:unsir unsir_pipeline/__init__.py unsir_pipeline/__init__.py
COPY --chown=unsir:unsir unsir_pipeline/adapters/__init__.py unsir_pipeline/adapters/__init__.py
COPY --chown=unsir:unsir unsir_pipeline/cli/__init__.py unsir_pipeline/cli/__init__.py
COPY --chown=unsir:unsir unsir_pipeline/governance/__init__.py unsir_pipeline/governance/__init__.py
COPY --chown=unsir:unsir unsir_pipeline/settings/__init__.py unsir_pipeline/settings/__init__.py
COPY --chown=unsir:unsir unsir/measures/__init__.py unsir/measures/__init__.py
COPY --chown=unsir:unsir unsir/methods/__init__.py unsir/methods/__init__.py
COPY --chown=unsir:unsir flows/__init__.py flows/__init__.py
COPY --chown=unsir:unsir tasks/__init__.py tasks/__init__.py
RUN pip install -e . "dvc-s3==3.3.0"

# The project itself (worker.Dockerfile.dockerignore keeps local state and caches out).
COPY --chown=unsir:unsir . .
RUN pip install --no-deps -e . \
    && mkdir -p /app/state && chown unsir:unsir /app/state

USER unsir
CMD ["prefect", "worker", "start", "--pool", "unsir-pool", "--type", "process", "--with-healthcheck"]
