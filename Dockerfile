# worklist-mpps: DICOM Modality Worklist + MPPS server (see README.md, docs/deploy-docker.md)
#   docker build -t worklist-mpps .                      from PyPI, every file hash-checked
#   scripts/build-wheelhouse.sh build/wheelhouse         (on a connected machine), then
#   docker build --network none --build-arg WHEELHOUSE=build/wheelhouse -t worklist-mpps .
#                                                        offline, no package index at all
# BASE_IMAGE: any image with Python 3.11 and its venv module (python:3.11-slim, or a
# Debian bookworm with python3 + python3-venv, whose python3 is "externally managed",
# PEP 668): everything goes into the virtualenv /opt/worklist-mpps, never the system's.
ARG BASE_IMAGE=python:3.11-slim

# --- build: the virtualenv (the wheelhouse and pip's work never reach the final image)
FROM ${BASE_IMAGE} AS build
# a folder of the build context made by scripts/build-wheelhouse.sh; empty: PyPI
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first (their own layer), exactly as locked: every file checked against its
# hash, from PyPI or from the wheelhouse with no index (README "Dependencies": `make lock`
# refreshes requirements.lock). The wheelhouse folder is copied only when named.
COPY requirements.lock ${WHEELHOUSE} /tmp/wheelhouse/
COPY requirements.lock ./
RUN python3 -m venv /opt/worklist-mpps \
    && if [ -n "$WHEELHOUSE" ]; then \
         /opt/worklist-mpps/bin/pip install --no-index --find-links /tmp/wheelhouse \
             --require-hashes -r requirements.lock; \
       else \
         /opt/worklist-mpps/bin/pip install --require-hashes -r requirements.lock; \
       fi
# the package itself, from this source, built with the locked setuptools: nothing is
# resolved or downloaded
COPY pyproject.toml README.md ./
COPY worklist_mpps ./worklist_mpps
RUN /opt/worklist-mpps/bin/pip install --no-index --no-deps --no-build-isolation .

# --- the image
FROM ${BASE_IMAGE}
COPY --from=build /opt/worklist-mpps /opt/worklist-mpps
WORKDIR /app
COPY sample_data ./sample_data
RUN useradd --system --uid 10001 worklist \
    && mkdir /data && chown worklist /data
ENV PATH=/opt/worklist-mpps/bin:$PATH

USER worklist
ENV WORKLIST_MPPS_DATABASE_URL=sqlite:////data/worklist.db \
    WORKLIST_MPPS_SAMPLE_FILE=/app/sample_data/worklist.yaml
VOLUME /data
# 5243 DICOM (worklist + MPPS), 5244 HTTP (DICOMweb, API, operator page),
# 2575 HL7 v2 order feed over MLLP (hl7_enabled; off by default)
EXPOSE 5243 5244 2575
# C-ECHO, and a committed write to the database (a read-only or full volume is unhealthy)
HEALTHCHECK --interval=30s --timeout=10s CMD ["worklist-mpps", "ping", "--deep"]
CMD ["worklist-mpps", "serve"]
