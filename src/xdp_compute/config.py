"""Settings: defaults, overridden by XDP_* environment variables, then by CLI flags.

Every ``XDP_*`` variable the gateway and the nodes read is declared here once, with its type and
meaning (pydantic-settings). ``Settings()`` validates the environment when a process starts; a bad
value raises ``InvalidSetting`` whose one-line message names the variable, so ``xdp gateway``
stops before it opens anything. Client-side variables (``XDP_URL``, ``XDP_TOKEN``,
``XDP_TOKEN_FILE``, ``XDP_CA``, ``XDP_KEY_DIR``, ``XDP_WITNESSES``) are read by the CLI and the
SDK; they are listed in ``CLIENT_VARIABLES`` for the documentation table. Test-only switches
(``XDP_TEST_*``, ``XDP_NODE_FAULT``) are read where they act and listed in ``TEST_VARIABLES``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xdp_compute.errors import XdpError

ENV_PREFIX = "XDP_"


class InvalidSetting(XdpError):
    """A setting (an ``XDP_*`` variable or the flag that overrides it) has a value it cannot take."""

    status, slug, title = 400, "invalid-setting", "Invalid setting"


def default_db_url() -> str:
    return f"sqlite:///{Path('.xdp') / 'gateway.db'}"


def _env(name: str) -> Any:
    """``validation_alias`` for a field whose variable is not ``XDP_<FIELD NAME>``; the field name
    stays accepted as a keyword (``Settings(db_url=...)``)."""
    return AliasChoices(ENV_PREFIX + name)


class _XdpSettings(BaseSettings):
    """What ``Settings`` and ``NodeSettings`` share: XDP_* variables only, frozen, validated, and a
    bad value raised as one ``InvalidSetting`` line naming its variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, populate_by_name=True,
                                      extra="forbid", case_sensitive=False, validate_default=True)

    def __init__(self, **kw: Any) -> None:
        try:
            super().__init__(**kw)
        except ValidationError as e:
            raise InvalidSetting(describe_error(e, type(self), given=kw)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        # Keyword arguments, then XDP_* variables; no .env file or secrets directory is read
        # implicitly (what configures a process is its environment and its flags).
        return init_settings, _PrefixedOnly(env_settings)


class Settings(_XdpSettings):
    """Everything the gateway needs to start; built once and passed down (no module globals).

    Each field reads ``XDP_<NAME>`` (``XDP_<FIELD>`` unless an alias is given); keyword arguments
    win over the environment. Frozen: derive a changed copy with ``with_``.
    """

    # repr=False: the URL may carry the database password.
    db_url: str = Field(default_factory=default_db_url, validation_alias=_env("DB"), repr=False, min_length=1,
                        description="SQLAlchemy URL of the gateway's database (sqlite:///PATH or "
                                    "postgresql://USER:PASSWORD@HOST/DB); --db overrides")
    http_host: str = Field("127.0.0.1", description="REST listen host; --http overrides")
    http_port: int = Field(8000, ge=1, le=65535, description="REST listen port (also what the container "
                                                             "HEALTHCHECK probes); --http overrides")
    grpc_host: str = Field("127.0.0.1", description="gRPC listen host for nodes; --grpc overrides")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC listen port for nodes; --grpc overrides")
    region: str = Field("CN-FJ", description="The gateway's region (cross-border rules); --region overrides")
    # Data categories that never cross a region border (the cross-border negative list).
    restricted_categories: Annotated[tuple[str, ...], NoDecode] = Field(
        ("health", "genetic", "biometric"),
        description="Comma-separated data categories that never cross a region border")
    max_body_bytes: int = Field(24 << 20, gt=0, description="Largest REST request body, bytes (else 413)")
    max_grpc_message_bytes: int = Field(64 << 20, gt=0, description="Largest gRPC message, bytes")
    heartbeat_seconds: float = Field(2.0, gt=0, description="Seconds between a node's heartbeats")
    offline_after_missed: int = Field(3, ge=1, description="Missed heartbeats after which a node is offline "
                                                           "(at least 6 s)")
    # How long the gateway waits for nodes in each protocol round before treating them as dropped.
    round_timeout_seconds: float = Field(20.0, gt=0, validation_alias=_env("ROUND_TIMEOUT"),
                                         description="Seconds the gateway waits for nodes in each protocol "
                                                     "round before treating them as dropped")
    # Per-analyst privacy budget (sequential composition across all datasets), by default.
    analyst_epsilon_budget: float = Field(1000.0, gt=0, description="Default per-analyst epsilon budget "
                                                                    "(across all datasets)")
    analyst_delta_budget: float = Field(0.001, ge=0, lt=1, description="Default per-analyst delta budget")
    # Gateway policy: how many participating nodes may collude with an analyst (give it their own
    # noise share); noise is calibrated for t - c honest shares. Empty: 1 once a job has >= 3 nodes.
    max_colluding_nodes: int | None = Field(None, ge=0, description="Nodes that may collude with an analyst "
                                                                    "(noise counts t - c honest shares); "
                                                                    "unset: 1 once a job has >= 3 nodes")
    # Secure aggregation over more than 40 nodes (SecAgg+, Bell et al. 2020): the fraction of a
    # session's nodes assumed to drop out, and to collude with a deviating gateway; the graph
    # degree k and threshold t are chosen from them (``crypto.secagg.secagg_plus_parameters``) and
    # a job no (k, t) fits is refused at planning.
    secagg_dropout_rate: float = Field(0.05, ge=0, lt=1, description="SecAgg+ (over 40 nodes): assumed "
                                                                      "fraction of nodes that drop out")
    secagg_corrupt_rate: float = Field(1 / 3, ge=0, lt=1, description="SecAgg+ (over 40 nodes): assumed "
                                                                       "fraction of nodes colluding with a "
                                                                       "deviating gateway")
    # Co-holders (issue #12): nodes one holder may run per dataset (they add no party), and
    # Register calls one holder token may make per minute (a burst of that many, then refilled).
    max_nodes_per_holder: int = Field(4, ge=1, description="Nodes one holder may run per dataset")
    registrations_per_minute: int = Field(12, ge=1, description="Register calls one holder token may make "
                                                                "per minute")
    # Test-only capture of every gRPC request the gateway receives (for privacy tests).
    grpc_capture_path: str | None = Field(None, validation_alias=_env("GRPC_CAPTURE"),
                                          description="Test only: record every gRPC request to this file")
    data_dir: Path = Field(Path(".xdp"), description="The gateway's own files (release-log key)")
    # The release log's Ed25519 signing key: a 0600 file outside the database (created on first
    # start; default <data_dir>/release-log.key). XDP_LOG_KEY, a secret from the environment,
    # takes precedence (base64 of the 32-byte seed, or a PKCS#8 PEM).
    log_key_path: Path | None = Field(None, validation_alias=_env("LOG_KEY_FILE"),
                                      description="Release-log signing key file (0600, created if missing; "
                                                  "default <data dir>/release-log.key)")
    log_key: str | None = Field(None, repr=False, exclude=True,
                                description="The release-log signing key itself (base64 seed or PKCS#8 "
                                            "PEM); wins over the key file")
    # TLS (issue #12): the gateway's certificate and key (HTTPS and gRPC) and the CA whose node
    # certificates gRPC requires. Plaintext only with ``insecure`` and only on loopback.
    tls_cert: str | None = Field(None, description="The gateway's certificate (HTTPS and gRPC)")
    tls_key: str | None = Field(None, description="The gateway's private key")
    client_ca: str | None = Field(None, description="CA whose node certificates gRPC requires")
    # Plaintext is a command-line decision (--insecure), never an environment default.
    insecure: bool = Field(False, validation_alias=AliasChoices("insecure"),
                           description="Plaintext on loopback (--insecure only)")
    # A request body must have arrived in full within this many seconds (else 408).
    body_timeout_seconds: float = Field(30.0, gt=0, validation_alias=_env("BODY_TIMEOUT"),
                                        description="Seconds a request body may take to arrive (else 408)")
    log_format: Literal["json", "text"] = Field("json", description="Gateway log lines: json (one object per "
                                                                    "line, with request_id) or text")
    # Replicas over PostgreSQL (issue #18): how often each looks for jobs whose replica died.
    orphan_check_seconds: float = Field(5.0, gt=0, validation_alias=_env("ORPHAN_CHECK_SECONDS"),
                                        description="Replicas on PostgreSQL: seconds between checks for jobs "
                                                    "whose gateway replica died (they are failed, charged "
                                                    "and logged)")

    @field_validator("restricted_categories", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(x.strip() for x in v.split(",") if x.strip())
        return v

    @field_validator("max_colluding_nodes", "grpc_capture_path", "log_key_path", "log_key", "tls_cert",
                     "tls_key", "client_ca", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    def with_(self, **kw: object) -> Settings:
        """A copy with ``kw`` changed, validated like the environment (an ``InvalidSetting`` names
        the field)."""
        return type(self)(**{**self._fields(), **kw})

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class NodeSettings(_XdpSettings):
    """What ``xdp node`` reads from XDP_* variables beyond its command-line options (which carry
    their own ``envvar``s: XDP_TOKEN, XDP_CA, XDP_NODE_CERT, ...). Validated like ``Settings``."""

    witness_refresh_seconds: float = Field(30.0, gt=0, validation_alias=_env("WITNESS_REFRESH"),
                                           description="Seconds between the node's cosignatures of the "
                                                       "release log (as a witness)")



class _PrefixedOnly:
    """The environment source, limited to ``XDP_*`` names: a field whose alias is not prefixed
    (``insecure``) is never read from the environment."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self) -> dict[str, Any]:
        values = self.inner()
        return {k: v for k, v in values.items() if k.startswith(ENV_PREFIX) or env_name(k) is not None}


def env_name(field: str, cls: type[BaseSettings] = Settings) -> str | None:
    """The ``XDP_*`` variable of a field (None if it has none)."""
    info = cls.model_fields.get(field)
    if info is None:
        return None
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) and first.startswith(ENV_PREFIX) else None
    return ENV_PREFIX + field.upper()


def describe_error(e: ValidationError, cls: type[BaseSettings] = Settings, given: dict[str, Any] | None = None) -> str:
    """One line naming the setting and what was wrong, for the first error: its variable when the
    value came from the environment, its field name when it was ``given`` as a keyword."""
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    key = loc[0] if loc else "?"
    field = key if key in cls.model_fields else next(
        (f for f in cls.model_fields if env_name(f, cls) == key), key)
    var = None if key in (given or {}) else env_name(field, cls)
    name = var or field
    value = err.get("input")
    shown = "" if field in ("log_key", "db_url") or value is None or isinstance(value, dict) else \
        f", got {value!r}"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{name}: {err.get('msg', 'invalid value')}{shown}{more}"


# Read by the CLI and the SDK, not by the gateway (documentation table and tests).
CLIENT_VARIABLES: dict[str, str] = {
    "XDP_URL": "Gateway REST URL for the CLI and Client.from_env()",
    "XDP_TOKEN": "Bearer token (CLI, SDK, xdp node)",
    "XDP_TOKEN_FILE": "File holding the bearer token",
    "XDP_CA": "CA certificate that verifies the gateway (CLI, SDK, xdp node)",
    "XDP_KEY_DIR": "Where the SDK keeps analysts' HE keys (default ~/.xdp/keys)",
    "XDP_WITNESSES": "Pinned witness keys for xdp audit verify",
    "XDP_NODE_CERT": "xdp node: the node's certificate",
    "XDP_NODE_KEY": "xdp node: the node's private key",
    "XDP_NODE_THREADS": "xdp node: compute threads of the task worker (0: the CPUs it may use)",
    "XDP_NODE_PRELOAD": "xdp node: load the training libraries at start",
}
# Read where they act; never set in production.
TEST_VARIABLES: tuple[str, ...] = (
    "XDP_TEST_NOISE_SEED", "XDP_TEST_NODE_DELAY", "XDP_TEST_NODE_BUSY", "XDP_NODE_FAULT",
    "XDP_TEST_GATEWAY_SIGMA_SCALE", "XDP_TEST_GATEWAY_SWAP_KEYS", "XDP_TEST_GATEWAY_SPLIT_PARTIES",
    "XDP_TEST_PG_URL",
)


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
