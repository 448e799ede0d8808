"""Gateway settings: defaults, overridden by XDP_* environment variables, then by CLI flags."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return tuple(x.strip() for x in raw.split(",") if x.strip())


def _env_optional_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {raw!r}")
    return value


def _env_rate(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number in [0, 1), got {raw!r}") from None
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {raw!r}")
    return value


def default_db_url() -> str:
    return f"sqlite:///{Path('.xdp') / 'gateway.db'}"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to start; built once and passed down (no module globals)."""

    db_url: str = field(default_factory=lambda: os.environ.get("XDP_DB", default_db_url()))
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    region: str = field(default_factory=lambda: os.environ.get("XDP_REGION", "CN-FJ"))
    # Data categories that never cross a region border (the cross-border negative list).
    restricted_categories: tuple[str, ...] = field(
        default_factory=lambda: _env_list("XDP_RESTRICTED_CATEGORIES", ("health", "genetic", "biometric")))
    max_body_bytes: int = field(default_factory=lambda: int(os.environ.get("XDP_MAX_BODY_BYTES", str(24 << 20))))
    max_grpc_message_bytes: int = 64 << 20
    heartbeat_seconds: float = field(default_factory=lambda: float(os.environ.get("XDP_HEARTBEAT_SECONDS", "2")))
    offline_after_missed: int = 3
    # How long the gateway waits for nodes in each protocol round before treating them as dropped.
    round_timeout_seconds: float = field(default_factory=lambda: float(os.environ.get("XDP_ROUND_TIMEOUT", "20")))
    # Per-analyst privacy budget (sequential composition across all datasets), by default.
    analyst_epsilon_budget: float = field(
        default_factory=lambda: float(os.environ.get("XDP_ANALYST_EPSILON_BUDGET", "1000")))
    analyst_delta_budget: float = field(
        default_factory=lambda: float(os.environ.get("XDP_ANALYST_DELTA_BUDGET", "0.001")))
    # Gateway policy: how many participating nodes may collude with an analyst (give it their own
    # noise share); noise is calibrated for t - c honest shares. Empty: 1 once a job has >= 3 nodes.
    max_colluding_nodes: int | None = field(default_factory=lambda: _env_optional_int("XDP_MAX_COLLUDING_NODES"))
    # Secure aggregation over more than 40 nodes (SecAgg+, Bell et al. 2020): the fraction of a
    # session's nodes assumed to drop out, and to collude with a deviating gateway; the graph
    # degree k and threshold t are chosen from them (``crypto.secagg.secagg_plus_parameters``) and
    # a job no (k, t) fits is refused at planning.
    secagg_dropout_rate: float = field(default_factory=lambda: _env_rate("XDP_SECAGG_DROPOUT_RATE", 0.05))
    secagg_corrupt_rate: float = field(default_factory=lambda: _env_rate("XDP_SECAGG_CORRUPT_RATE", 1 / 3))
    # Co-holders (issue #12): nodes one holder may run per dataset (they add no party), and
    # Register calls one holder token may make per minute (a burst of that many, then refilled).
    max_nodes_per_holder: int = field(default_factory=lambda: int(os.environ.get("XDP_MAX_NODES_PER_HOLDER", "4")))
    registrations_per_minute: int = field(
        default_factory=lambda: int(os.environ.get("XDP_REGISTRATIONS_PER_MINUTE", "12")))
    # Test-only capture of every gRPC request the gateway receives (for privacy tests).
    grpc_capture_path: str | None = field(default_factory=lambda: os.environ.get("XDP_GRPC_CAPTURE"))
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("XDP_DATA_DIR", ".xdp")))
    # The release log's Ed25519 signing key: a 0600 file outside the database (created on first
    # start; default <data_dir>/release-log.key). XDP_LOG_KEY, a secret from the environment,
    # takes precedence (base64 of the 32-byte seed, or a PKCS#8 PEM).
    log_key_path: Path | None = field(
        default_factory=lambda: Path(os.environ["XDP_LOG_KEY_FILE"]) if os.environ.get("XDP_LOG_KEY_FILE") else None)
    # TLS (issue #12): the gateway's certificate and key (HTTPS and gRPC) and the CA whose node
    # certificates gRPC requires. Plaintext only with ``insecure`` and only on loopback.
    tls_cert: str | None = field(default_factory=lambda: os.environ.get("XDP_TLS_CERT") or None)
    tls_key: str | None = field(default_factory=lambda: os.environ.get("XDP_TLS_KEY") or None)
    client_ca: str | None = field(default_factory=lambda: os.environ.get("XDP_CLIENT_CA") or None)
    insecure: bool = False
    # A request body must have arrived in full within this many seconds (else 408).
    body_timeout_seconds: float = field(default_factory=lambda: float(os.environ.get("XDP_BODY_TIMEOUT", "30")))

    def with_(self, **kw: object) -> Settings:
        return replace(self, **kw)  # type: ignore[arg-type]


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); raises ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1); False for anything else."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False
