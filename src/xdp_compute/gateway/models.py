"""SQLAlchemy 2 tables of the gateway's store. Migrations live in ``gateway/migrations``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Principal(Base):
    __tablename__ = "principals"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    holder_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    region: Mapped[str] = mapped_column(String(64))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[float] = mapped_column(Float, default=0.0)
    registered_at: Mapped[float] = mapped_column(Float)
    # What its holder sees (issue #15): the version the node reports and its TLS client certificate.
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cert_subject: Mapped[str | None] = mapped_column(String(512), nullable=True)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cert_not_after: Mapped[float | None] = mapped_column(Float, nullable=True)


class Dataset(Base):
    """A dataset name, owned by the first holder that registered it (issue #12: co-holders are strangers)."""

    __tablename__ = "datasets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    schema_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    # Nullable only for rows older than ownership; the migration fills it from the first node.
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("principals.id"), nullable=True)
    # The owner's policy fields as its newest node declared them; they apply to members' rows too.
    policy_json: Mapped[str] = mapped_column(Text, default="{}")


class DatasetMember(Base):
    """A holder the owner invited to add its rows to the owner's dataset (the owner is not listed)."""

    __tablename__ = "dataset_members"
    __table_args__ = (UniqueConstraint("dataset_name", "holder_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_name: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    holder_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    invited_by: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    invited_at: Mapped[float] = mapped_column(Float)


class NodeDataset(Base):
    """One node's part of a dataset, with that node's policy and its privacy ledger row."""

    __tablename__ = "node_datasets"
    __table_args__ = (UniqueConstraint("node_id", "dataset_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    dataset_name: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    spec_json: Mapped[str] = mapped_column(Text)
    eps_budget: Mapped[float] = mapped_column(Float)
    delta_budget: Mapped[float] = mapped_column(Float)
    eps_spent: Mapped[float] = mapped_column(Float, default=0.0)
    delta_spent: Mapped[float] = mapped_column(Float, default=0.0)
    eps_reserved: Mapped[float] = mapped_column(Float, default=0.0)
    delta_reserved: Mapped[float] = mapped_column(Float, default=0.0)


class AnalystBudget(Base):
    __tablename__ = "analyst_budgets"
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), primary_key=True)
    eps_budget: Mapped[float] = mapped_column(Float)
    delta_budget: Mapped[float] = mapped_column(Float)
    eps_spent: Mapped[float] = mapped_column(Float, default=0.0)
    delta_spent: Mapped[float] = mapped_column(Float, default=0.0)
    eps_reserved: Mapped[float] = mapped_column(Float, default=0.0)
    delta_reserved: Mapped[float] = mapped_column(Float, default=0.0)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("principal_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    spec_json: Mapped[str] = mapped_column(Text)
    plan_json: Mapped[str] = mapped_column(Text, default="{}")
    cost_json: Mapped[str] = mapped_column(Text, default="{}")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    compute_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class Reservation(Base):
    """A budget hold for one job on one ledger row (node-dataset or analyst)."""

    __tablename__ = "reservations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    node_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("node_datasets.id"), nullable=True)
    analyst_id: Mapped[str | None] = mapped_column(ForeignKey("principals.id"), nullable=True)
    eps: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))


class Approval(Base):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("job_id", "holder_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    holder_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LogEntry(Base):
    """Append-only release-log entries (RFC 9162 leaves are their canonical JSON)."""

    __tablename__ = "log_entries"
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entry_json: Mapped[str] = mapped_column(Text)


class TreeHead(Base):
    __tablename__ = "tree_heads"
    tree_size: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    root_hash: Mapped[str] = mapped_column(String(64))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str] = mapped_column(String(64))


class Secret(Base):
    __tablename__ = "secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class WitnessCosignature(Base):
    """A node's witness key and the latest C2SP cosignature/v1 it gave the release log's checkpoint.

    The operator can delete or roll back these rows, but cannot forge new ones: auditors pin the
    witnesses' keys and require a fresh quorum (issue #12: a log nobody can rewrite alone).
    """

    __tablename__ = "witness_cosignatures"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the witness's note key name
    node_id: Mapped[str] = mapped_column(String(32))
    public_key: Mapped[str] = mapped_column(String(64))               # raw Ed25519 key, hex
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(64))
    cosigned_at: Mapped[int] = mapped_column(BigInteger)              # the cosignature's timestamp (s)
    signature_line: Mapped[str] = mapped_column(Text)                 # "— <name> <base64>"


# ---------------------------------------------------------------- data exchange (issue #17)
# Assets, products, subscriptions, metered usage and statements. The release log is the
# registry: every asset version, product listing, subscription decision and statement is a log
# entry; these rows index it and hold the counters that must not race (``gateway/exchange.py``).
class AssetVersion(Base):
    """One registered version of a dataset as an asset: the log entry that registered it."""

    __tablename__ = "asset_versions"
    __table_args__ = (UniqueConstraint("dataset_name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_name: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    version: Mapped[int] = mapped_column(Integer)
    log_index: Mapped[int] = mapped_column(Integer)
    owner_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    content_commitment: Mapped[str] = mapped_column(String(64))
    metadata_commitment: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[float] = mapped_column(Float)


class Product(Base):
    """A product an owner lists on its dataset: kind, unit, price per unit, allowance per subscriber."""

    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_name: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    unit: Mapped[str] = mapped_column(String(16))
    unit_price: Mapped[float] = mapped_column(Float)
    allowance: Mapped[float] = mapped_column(Float)
    terms_json: Mapped[str] = mapped_column(Text, default="{}")
    log_index: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Subscription(Base):
    """An analyst's subscription to a product: pending until the owner decides; its counters."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("product_id", "principal_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    status: Mapped[str] = mapped_column(String(16))
    used: Mapped[float] = mapped_column(Float, default=0.0)
    held: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Usage(Base):
    """Units of a subscription: held at submission, metered at release (or given back)."""

    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # held | metered | returned
    units: Mapped[float] = mapped_column(Float)
    amount_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    parties_json: Mapped[str] = mapped_column(Text, default="[]")
    log_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    metered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Statement(Base):
    """A settlement statement issued for one party (subscriber or owner) and one billing period."""

    __tablename__ = "statements"
    __table_args__ = (UniqueConstraint("period", "party_id", "side"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    period: Mapped[str] = mapped_column(String(7))
    party_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    side: Mapped[str] = mapped_column(String(16))  # subscriber | owner
    total_micros: Mapped[int] = mapped_column(BigInteger)
    log_index: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[float] = mapped_column(Float)
