# syntax=docker/dockerfile:1
# One Dockerfile, an image per role: docker build --target gateway | node.
#   gateway  REST + gRPC, SQLite/PostgreSQL, Paillier aggregation (phe, gmpy2). No torch, no
#            TenSEAL: the gateway never trains and only forwards CKKS ciphertexts.
#   node     a holder's node: CKKS (TenSEAL) and Paillier, DP training (torch CPU, Opacus),
#            PostgreSQL sources.
# Settings come from XDP_* variables (README, "Settings"); both images keep their state in the
# /data volume and run as uid 10001.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src

FROM build AS build-gateway
# The `he` extra without TenSEAL (versions as in pyproject.toml; a test compares them).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[postgres]" "phe==1.5.0" "gmpy2>=2.1"

FROM build AS build-node
# torch first, the CPU build, exactly the version the project is tested with.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[he,train,postgres]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 XDP_DATA_DIR=/data
RUN groupadd --system --gid 10001 xdp \
 && useradd --system --uid 10001 --gid xdp --home-dir /data --create-home xdp
WORKDIR /data
ENTRYPOINT ["xdp"]

FROM runtime AS node
COPY --from=build-node /opt/venv /opt/venv
# The node's volume: pki/ (ca.pem, node.pem, node.key), holder.token, state/ (journal, ledger,
# witness key); its manifest and data are mounted at /data/input. Paths only, no secret here.
# hadolint ignore=DL3064
ENV XDP_CA=/data/pki/ca.pem XDP_NODE_CERT=/data/pki/node.pem XDP_NODE_KEY=/data/pki/node.key \
    XDP_TOKEN_FILE=/data/holder.token
VOLUME ["/data"]
USER 10001:10001
# A node opens no port (it dials out to the gateway): there is nothing to probe.
HEALTHCHECK NONE
CMD ["node", "--gateway", "gateway:50051", "--manifest", "/data/input/node.toml"]

FROM runtime AS gateway
COPY --from=build-gateway /opt/venv /opt/venv
COPY --chmod=0755 docker/xdp-init.sh /usr/local/bin/xdp-init
# Listen addresses, database and TLS as settings: `xdp gateway` and the HEALTHCHECK read the same
# variables, so the probe follows XDP_HTTP_PORT when an operator changes it. TLS on every port
# (plaintext is refused off loopback): create the certificates into the volume first, e.g.
#   docker run --rm -v xdp:/data IMAGE admin pki init /data/pki --host gateway.example.org
ENV XDP_HTTP_HOST=0.0.0.0 XDP_HTTP_PORT=8000 XDP_GRPC_HOST=0.0.0.0 XDP_GRPC_PORT=50051 \
    XDP_DB=sqlite:////data/gateway.db \
    XDP_TLS_CERT=/data/pki/gateway.pem XDP_TLS_KEY=/data/pki/gateway.key XDP_CLIENT_CA=/data/pki/ca.pem
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "xdp_compute.gateway.server", "healthcheck"]
CMD ["gateway"]
