# The ragobs demo agent: a simulated streaming RAG agent serving /metrics,
# /api/summary and the live panel on port 9464 (docker-compose.yml runs it).
#   docker build -t ragobs . && docker run --rm -p 9464:9464 ragobs
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs (see .dockerignore); a regular, non-editable
# install with the OTLP exporter (so OTEL_EXPORTER_OTLP_ENDPOINT sends traces), the
# openai client (the demo's --provider openai) and genai-prices (what each call cost).
WORKDIR /tmp/ragobs-src
COPY pyproject.toml README.md ./
COPY ragobs ./ragobs
RUN pip install '.[otlp,openai,cost]' \
    && cd / && rm -rf /tmp/ragobs-src \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/ragobs \
       --shell /usr/sbin/nologin ragobs

USER ragobs
WORKDIR /home/ragobs

# The sidecar binds every interface inside the container. Change the port with
# RAGOBS_PORT rather than --port: the healthcheck reads the same variable.
ENV RAGOBS_HOST=0.0.0.0 \
    RAGOBS_PORT=9464 \
    OTEL_SERVICE_NAME=ragobs-demo
EXPOSE 9464

# No curl in slim images: Python asks /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('RAGOBS_PORT', '9464'); sys.exit(0 if urllib.request.urlopen(url, timeout=3).status == 200 else 1)"]

# ragobs stops cleanly, printing a final summary, on Ctrl-C (SIGINT).
STOPSIGNAL SIGINT
ENTRYPOINT ["ragobs"]
CMD ["demo", "--requests", "0"]
