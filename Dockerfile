# wsserve server image: slim Python, non-root, the README's install command.
#   docker build -t wsserve:0.1.0 .                              # server, with --grpc-port and guided_regex/json (grpc,structured)
#   docker build -t wsserve:0.1.0 --build-arg EXTRAS=grpc,structured,dask .  # also `wsserve train` on Dask
#   docker build -t wsserve:0.1.0 --build-arg EXTRAS= .           # server only, no gRPC
#   docker run --rm -p 8765:8765 wsserve:0.1.0
# deploy/k8s/deployment.yaml runs it (as user 10001, read-only root filesystem).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    WSSERVE_CACHE_DIR=/var/cache/wsserve

RUN groupadd --system --gid 10001 wsserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wsserve \
 && mkdir -p /var/cache/wsserve /models \
 && chown wsserve:wsserve /var/cache/wsserve

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wsserve ./wsserve

# The README's install command (`python3 -m pip install -e .`), plus optional extras: grpc by
# default, for deploy/k8s/deployment.yaml's --grpc-port, and structured (guided_regex, guided_json).
ARG EXTRAS="grpc,structured"
RUN python3 -m pip install -e ".${EXTRAS:+[$EXTRAS]}" \
 && python3 -m wsserve --version

USER 10001:10001
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=2)"]
# SIGTERM (docker stop, Kubernetes) drains gracefully within --drain-timeout-s (default 10 s),
# and the process exits at most 6 s after that deadline: docker stop's own default (10 s) kills
# it mid-drain, so give `docker stop --time 16` (or `docker run --stop-timeout 16`), or drain
# time + 6 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765"]
