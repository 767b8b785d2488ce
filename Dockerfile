# worklist-mpps: DICOM Modality Worklist + MPPS server (see README.md)
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worklist_mpps ./worklist_mpps
COPY sample_data ./sample_data
RUN pip install --no-cache-dir ".[postgres]" \
    && useradd --system --uid 10001 worklist \
    && mkdir /data && chown worklist /data

USER worklist
ENV WORKLIST_MPPS_DATABASE_URL=sqlite:////data/worklist.db \
    WORKLIST_MPPS_SAMPLE_FILE=/app/sample_data/worklist.yaml
VOLUME /data
EXPOSE 5243 5244
HEALTHCHECK --interval=30s --timeout=10s CMD ["worklist-mpps", "ping"]
CMD ["worklist-mpps", "serve"]
