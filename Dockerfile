# syntax=docker/dockerfile:1
# Multi-stage image for the gateway (and, with another command, a node).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY src ./src
# The project itself is the local path '.'; its dependencies carry their ranges in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[he,train,postgres]"

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 XDP_DATA_DIR=/data
RUN groupadd --system --gid 10001 xdp \
 && useradd --system --uid 10001 --gid xdp --home-dir /data --create-home xdp
COPY --from=build /opt/venv /opt/venv
WORKDIR /data
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import ssl,sys,urllib.request; c=ssl.create_default_context(cafile='/data/pki/ca.pem'); sys.exit(0 if urllib.request.urlopen('https://127.0.0.1:8000/healthz', timeout=2, context=c).status == 200 else 1)"]
ENTRYPOINT ["xdp"]
# TLS on every port (plaintext is refused off loopback). Create the certificates once into the
# /data volume: docker run -v xdp:/data IMAGE admin pki init /data/pki --host gateway.example.org
CMD ["gateway", "--db", "sqlite:////data/gateway.db", "--http", "0.0.0.0:8000", "--grpc", "0.0.0.0:50051", \
     "--tls-cert", "/data/pki/gateway.pem", "--tls-key", "/data/pki/gateway.key", "--client-ca", "/data/pki/ca.pem"]
