# rsir container image: one image for the Ray head, the Ray workers and the RayJob
# submitter pods (k8s/). Built on the official Ray image that matches the ray pin in
# pyproject.toml (ray==2.60.0) and Python 3.11.
#
# Tag convention (k8s/ and tests/test_k8s_manifests.py rely on it; <version> is
# [project].version in pyproject.toml):
#   docker build -t rsir:<version> .                        # GPU image (gpu-prod)
#   docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311 \
#                -t rsir:<version>-dev .                    # CPU image (cpu-dev)
#
# Inside: rsir installed with its extras (postgres: the driver of a monitor store at a
# postgresql+psycopg:// URL); the repository's jobs/ and configs/ under /home/ray/rsir,
# which is also the working directory, so
# `python jobs/<job>.py --config configs/<recipe>.yaml` runs as written.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

ARG RSIR_VERSION=0.1.0
LABEL org.opencontainers.image.title="rsir" \
      org.opencontainers.image.version="${RSIR_VERSION}" \
      org.opencontainers.image.description="Ray-distributed training and retrieval for remote-sensing imagery"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A Java runtime for the caption metrics' COCO toolkit (METEOR 1.5, PTB tokenizer) in
# `rsir evaluate` on pairs; without it they fall back to NLTK.
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/*
USER ray

WORKDIR /home/ray/rsir

# Dependencies and the package first (cached until pyproject.toml or platform/ change).
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform/ platform/
RUN pip install ".[text,ann,geo,tune,detect,translate,postgres]" \
    && python -m rsir.setup_offline \
    && rm -rf build platform/*.egg-info

# Entry points and recipes: what a RayJob's working_dir ships.
COPY --chown=ray:users jobs/ jobs/
COPY --chown=ray:users configs/ configs/

# Fail the build, not the first job, when the install is broken.
RUN python -c "import rsir, ray; assert ray.__version__ == '2.60.0', ray.__version__"
