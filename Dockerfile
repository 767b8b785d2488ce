# worklist-mpps: DICOM Modality Worklist + MPPS server (see README.md)
FROM python:3.11-slim

WORKDIR /app
# Dependencies first (their own layer), exactly as locked: every file checked against its
# hash; the package itself is then installed without resolving anything (README
# "Dependencies": `make lock` refreshes requirements.lock)
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY worklist_mpps ./worklist_mpps
COPY sample_data ./sample_data
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 worklist \
    && mkdir /data && chown worklist /data

USER worklist
ENV WORKLIST_MPPS_DATABASE_URL=sqlite:////data/worklist.db \
    WORKLIST_MPPS_SAMPLE_FILE=/app/sample_data/worklist.yaml
VOLUME /data
EXPOSE 5243 5244
# C-ECHO, and a committed write to the database (a read-only or full volume is unhealthy)
HEALTHCHECK --interval=30s --timeout=10s CMD ["worklist-mpps", "ping", "--deep"]
CMD ["worklist-mpps", "serve"]
