"""Private joins on the node: one holder's side of the protocol of docs/private-joins.md (issue #16).

Rounds (the gateway drives them, ``gateway/join.py``; names as in the doc's "Message flow"):

0. ``join_keys``: the node checks the task against its own manifest and policy (its side of the
   plan, its key column's ``join`` use and domain, its per-query cap), computes its own noise
   (``plan_noise`` with one honest share: its share alone meets the target), charges its own
   ledger and journal, then advertises a fresh X25519 key for the sealed channel to the other
   holder, signed with its certificate when the deployment has a PKI (as secure aggregation's
   AdvertiseKeys, Bonawitz et al. 2017, Fig. 4).
0b. ``join_seed``: checks the peer's key and signature; sends its half of the dummy seed and the
   plan's digest, sealed (each holder checks the other was shown the same plan).
1. ``join_begin`` (Ion et al. 2020, §3 Round 1): loads its rows, normalises keys, drops every row
   whose key occurs more than once and rows without a key, pads to its declared ``max_rows`` with
   random points, blinds ``s·H(d, k)`` and shuffles. A also encrypts each row's packed
   indicators under the analyst's key. Sealed for the peer.
2. ``join_double_blind`` (Round 2): blinds the peer's points again and hashes them to tags, adds
   the matched dummies (``D`` tags both holders derive from the joint seed) and random tags up to
   ``2·shift`` so its list length is public, shuffles. B re-randomises A's ciphertexts (and adds
   Enc(0) for its dummies).
4. ``join_unpermute`` (A): undoes its shuffle on the aligned list, keeps B's rows only, re-randomises.
5. ``join_aggregate`` (B): Σ_j ct_j^(v_j) per (B-cell, measurement) + Enc(its noise share).
6. ``join_noise`` (A): adds Enc(its noise share) to each output; the job's state is dropped.

Everything a node receives is fixed in size by public parameters (``max_rows``, the dummy shift,
the key size), whichever of its rows matched. Paillier: c = (1 + m·n)·r^n mod n^2 (Paillier 1999,
g = n + 1); r^n from the obfuscator pool; re-randomisation multiplies by a fresh r^n.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import os
import secrets
import struct
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import gmpy2
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from xdp_compute.contract.tasks import (
    JoinAggregate,
    JoinBegin,
    JoinCiphertexts,
    JoinDoubleBlind,
    JoinKeys,
    JoinKeysReply,
    JoinNoise,
    JoinSealed,
    JoinSeed,
    JoinTags,
    JoinUnpermute,
)
from xdp_compute.crypto.psi import BlindingScalar, hash_to_group, normalise_key, random_point, tag
from xdp_compute.crypto.psi.group import POINT_BYTES, TAG_BYTES
from xdp_compute.crypto.secagg.identity import signature_valid
from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.errors import BadRequest, InvalidKey
from xdp_compute.node.policy import CAP_SLACK
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.query import noise_source
from xdp_compute.privacy import NoisePlan, sample_discrete_gaussian_vector
from xdp_compute.privacy.randomness import SeededRandomness
from xdp_compute.privacy.samplers import sample_discrete_laplace
from xdp_compute.query.join_plan import (
    JoinPlan,
    JoinSide,
    dummy_shift_for,
    join_noise_plan,
    join_slots,
    pack_slots,
)
from xdp_compute.query.plan import _bound_magnitude
from xdp_compute.query.where import (
    And,
    Between,
    Compare,
    InList,
    IsNull,
    Not,
    Or,
    Predicate,
    predicate_columns,
)

if TYPE_CHECKING:
    from xdp_compute.crypto.paillier import PaillierPublic
    from xdp_compute.node.tasks.he import HeTasks
    from xdp_compute.node.tasks.secagg import SecAggSessions

log = logging.getLogger("xdp.node.join")

MAX_OPEN_JOINS = 16
_SEAL_CONTEXT = b"xdp-join/v1/sealed"
_KEY_CONTEXT = b"xdp-join/v1/advertise-key"
_SEED_CONTEXT = b"xdp-join/v1/seed"
_DUMMY_CONTEXT = b"xdp-join/v1/dummy"
_MAX_BLOB = 256 << 20
#: At most this many obfuscators are precomputed ahead of a join per side (~50 MB at 3072 bits);
#: any rest is computed when the round takes it.
_PREFILL_MAX = 1 << 16


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def key_statement(job_id: str, node_id: str, side: str, key: bytes) -> bytes:
    """What a node signs for its join key: bound to the job, the node and its side."""
    return _frame(_KEY_CONTEXT, job_id.encode(), node_id.encode(), side.encode(), key)


def dummy_count(plan: JoinPlan, seed: bytes) -> int:
    """D = clip(shift + DiscreteLaplace(1/card_epsilon), 0, 2·shift), drawn from the joint seed.

    Both holders draw the same D: the DRBG is AES-CTR keyed by the seed (each holder contributed
    half of it from the OS CSPRNG, so neither chose it). The gateway never sees the seed.
    """
    rng = SeededRandomness(hashlib.sha256(_SEED_CONTEXT + b"/count" + seed).digest())
    z = sample_discrete_laplace(1 / Fraction(plan.card_epsilon).limit_denominator(1 << 20), rng)
    return min(max(plan.dummy_shift + z, 0), plan.dummy_max)


def dummy_tags(seed: bytes, count: int) -> list[bytes]:
    """The D matched dummies' tags: HMAC(seed, "dummy" || i), cut to a tag's length. Pseudorandom to
    anyone without the seed, like every real tag; both holders compute the same list."""
    return [hmac.new(seed, _DUMMY_CONTEXT + i.to_bytes(4, "big"), hashlib.sha256).digest()[:TAG_BYTES]
            for i in range(count)]


def shuffled(n: int) -> list[int]:
    """A uniform secret permutation of range(n) (Fisher-Yates from the OS CSPRNG)."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# ---------------------------------------------------------------------------- rows
def _passes(p: Predicate | None, row: dict[str, Any]) -> bool:
    """SQL semantics of a WHERE over one row (NULL compares false), as the pushdown SQL does."""
    if p is None:
        return True
    if isinstance(p, And):
        return all(_passes(q, row) for q in p.items)
    if isinstance(p, Or):
        return any(_passes(q, row) for q in p.items)
    if isinstance(p, Not):
        return not _passes(p.item, row)
    if isinstance(p, IsNull):
        return (row.get(p.column) is None) != p.negated
    v = row.get(p.column)
    if v is None:
        return False
    try:
        if isinstance(p, Compare):
            return bool({"=": v == p.value, "<>": v != p.value, "<": v < p.value, "<=": v <= p.value,
                         ">": v > p.value, ">=": v >= p.value}[p.op])
        if isinstance(p, InList):
            return (v in p.values) != p.negated
        if isinstance(p, Between):
            return (p.low <= v <= p.high) != p.negated
    except TypeError:
        return False
    return False


def _typed(col: ColumnSpec, raw: Any) -> Any:
    """A raw source value as its declared type; a value that does not cast is NULL."""
    if raw is None:
        return None
    if col.type in ("int", "float"):
        try:
            x = float(raw)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None
    if col.type == "bool":
        return bool(raw) if isinstance(raw, bool) else str(raw).lower() in ("true", "1", "t", "yes")
    text = str(raw)
    if col.type == "category" and col.values is not None and text not in col.values:
        return None
    return text


@dataclass
class JoinRows:
    """This holder's rows after normalisation and de-duplication, in a secret shuffled order."""

    keys: list[bytes]
    cells: list[int | None]            # A/B-cell of each row, None when its WHERE fails
    values: list[tuple[int, ...]]      # B: per measurement, the fixed-point value (A: empty)


def load_rows(node: NodeContext, ds: DatasetSpec, plan: JoinPlan, side: JoinSide, is_b: bool) -> JoinRows:
    """Read key, group, filter and value columns; normalise keys (``normalise_key``); drop every row
    whose key is empty or occurs more than once (all of them: "first" would depend on file order;
    docs/private-joins.md, "Duplicates"). The count dropped goes to this node's log only."""
    key_col = ds.column(side.key)
    assert key_col is not None
    cols = [key_col, *side.columns]
    with node.sources.open(node.manifest, ds) as src:
        actual = {n.lower(): n for n in src.column_names()}
        missing = [c.name for c in cols if c.name.lower() not in actual]
        if missing:
            raise BadRequest(f"dataset {ds.name!r}: column(s) {missing} missing from the source")
        select = ", ".join('"' + actual[c.name.lower()].replace('"', '""') + '"' for c in cols)
        raw = src.execute(f"SELECT {select} FROM {src.relation_sql()}")
    counts: dict[bytes, int] = {}
    normalised = []
    for r in raw:
        k = normalise_key(side.join_domain, r[0])
        normalised.append(k)
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    rows = JoinRows([], [], [])
    dropped = 0
    for r, k in zip(raw, normalised, strict=True):
        if k is None or counts[k] != 1:
            dropped += 1
            continue
        row = {c.name: _typed(c, v) for c, v in zip(side.columns, r[1:], strict=True)}
        cell: int | None = None
        if _passes(side.where, row):
            values = tuple(row.get(g) for g in side.groups)
            cell = side.cells.index(values) if values in side.cells else None
        rows.keys.append(k)
        rows.cells.append(cell)
        if is_b:
            rows.values.append(tuple(_measure(plan, m_kind, m_col, row) for m_kind, m_col in
                                     ((m.kind, m.column) for m in plan.inner.measurements)))
    log.info("join on %s: %d row(s) dropped for an empty or repeated key (this holder's log only)",
             ds.name, dropped)
    if len(rows.keys) > side.max_rows:
        raise BadRequest(f"dataset {ds.name!r} holds more rows than its declared max_rows {side.max_rows}")
    order = shuffled(len(rows.keys))
    return JoinRows([rows.keys[i] for i in order], [rows.cells[i] for i in order],
                    [rows.values[i] for i in order] if is_b else [])


def _measure(plan: JoinPlan, kind: str, column: str | None, row: dict[str, Any]) -> int:
    """One row's fixed-point contribution to a measurement: clipped to the declared bounds."""
    if column is None:
        return 1
    spec = next(c for c in plan.b.columns if c.name == column)
    x = row.get(column)
    if x is None:
        return 0
    if kind == "count":
        return 1
    lo = float(spec.min if spec.min is not None else 0.0)
    hi = float(spec.max if spec.max is not None else 1.0)
    x = min(max(float(x), lo), hi)
    m = next(mm for mm in plan.inner.measurements if mm.kind == kind and mm.column == column)
    return round((x if kind == "sum" else x * x) * m.scale)


# ---------------------------------------------------------------------------- job state
@dataclass
class JoinJob:
    plan: JoinPlan
    side: str
    peer: str
    ds: DatasetSpec
    public: PaillierPublic
    noise: NoisePlan
    secret: PrivateKey
    box: Box | None = None
    seed_half: bytes = b""
    seed: bytes = b""
    dummies: int = 0
    rows: JoinRows | None = None
    tau: list[int] = field(default_factory=list)  # A: position in its tag list -> B row index or -1
    scalar: BlindingScalar | None = None          # dropped once the peer's points are blinded
    step: str = "keys"


class JoinTasks:
    """The join task kinds on one node; one ``JoinJob`` per open job, dropped at its last round."""

    def __init__(self, node: NodeContext, sessions: SecAggSessions, he: HeTasks) -> None:
        self.node, self.he = node, he
        self._signer = sessions._signer
        self._verifier = sessions._verifier
        self._jobs: dict[str, JoinJob] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _job(self, job_id: str, step: str) -> JoinJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise BadRequest(f"no open join for job {job_id} on this node")
        if job.step != step:
            raise BadRequest(f"join job {job_id} is at step {job.step!r}, not {step!r}")
        return job

    def _seal(self, job_id: str, job: JoinJob, label: bytes, payload: bytes) -> bytes:
        assert job.box is not None
        header = _frame(_SEAL_CONTEXT, job_id.encode(), job.side.encode(), label)
        return bytes(job.box.encrypt(header + payload))

    def _open(self, job_id: str, job: JoinJob, label: bytes, sealed: bytes) -> bytes:
        """Open a sealed message of the peer: authenticated (Poly1305), bound to this job, the peer's
        side and the round, so the gateway can neither read, forge nor replay one elsewhere."""
        assert job.box is not None
        peer_side = "B" if job.side == "A" else "A"
        header = _frame(_SEAL_CONTEXT, job_id.encode(), peer_side.encode(), label)
        try:
            plain = job.box.decrypt(sealed)
        except CryptoError:
            raise BadRequest("a sealed join message did not open (not from the other holder, or altered)") from None
        if not plain.startswith(header):
            raise BadRequest("a sealed join message is for another job, side or round")
        return plain[len(header):]

    def _pool_take(self, public: PaillierPublic, count: int) -> list[int]:
        return self.he.obfuscator_pool(public).take(count) if count else []

    def _encrypt(self, public: PaillierPublic, plaintexts: list[int]) -> list[int]:
        """Paillier 1999 with g = n + 1: c = (1 + m·n)·r^n mod n^2, r^n from the obfuscator pool."""
        n, n2 = public.n, public.n_square
        obf = self._pool_take(public, len(plaintexts))
        return [int((1 + (m % n) * n) * r % n2) for m, r in zip(plaintexts, obf, strict=True)]

    def _rerandomise(self, public: PaillierPublic, cts: list[int]) -> list[int]:
        n2 = public.n_square
        obf = self._pool_take(public, len(cts))
        return [int(c * r % n2) for c, r in zip(cts, obf, strict=True)]

    @staticmethod
    def _cts_to_bytes(public: PaillierPublic, cts: list[int]) -> bytes:
        from xdp_compute.crypto.paillier import ciphertexts_to_bytes

        return ciphertexts_to_bytes(cts, public)

    @staticmethod
    def _cts_from_bytes(public: PaillierPublic, data: bytes, count: int) -> list[int]:
        from xdp_compute.crypto.paillier import ciphertexts_from_bytes

        cts = ciphertexts_from_bytes(data, public, max_bytes=_MAX_BLOB)
        if len(cts) != count:
            raise BadRequest(f"expected {count} ciphertexts, got {len(cts)}")
        return cts

    def _noise_plaintexts(self, job: JoinJob, measurement: int, b_cell: int) -> int:
        """This holder's noise share for one output ciphertext: one draw per A-cell slot."""
        plan = job.plan
        m = plan.inner.measurements[measurement]
        # Every A-cell g pairs with B-cell b_cell (cells are the full cross product): one draw per slot.
        del b_cell
        s2 = job.noise[m.key].sigma_node2
        draws = sample_discrete_gaussian_vector(s2, len(plan.a.cells), noise_source(self.node))
        return pack_slots([int(x) for x in draws], job.public.n, plan.slot_bits)

    # ------------------------------------------------------------------ round 0: policy, charge, key
    def keys(self, job_id: str, request: JoinKeys) -> JoinKeysReply:
        """Check the task against this node's own manifest and policy, charge it, advertise a key.

        All before a row is read, so a refusal depends on public inputs only."""
        from xdp_compute.crypto.paillier import PaillierPublic

        plan = JoinPlan.from_dict(request.plan)
        side = plan.side(request.side)
        ds = self.node.manifest.dataset(side.dataset)
        if ds is None:
            raise BadRequest(f"this node does not hold dataset {side.dataset!r}")
        check_join_side(ds, plan, side, is_b=request.side == "B")
        public = PaillierPublic.from_dict(request.public_key)
        if len(plan.a.cells) > join_slots(public.bits, plan.slot_bits):
            raise BadRequest(f"{len(plan.a.cells)} cells on the indicator side do not fit one {public.bits}-bit "
                             "ciphertext: group by fewer values on that side")
        noise = join_noise_plan(plan)
        eps, delta = noise.epsilon + plan.card_epsilon, noise.delta + plan.card_delta
        if eps > ds.max_epsilon_per_query + CAP_SLACK:
            raise BadRequest(f"epsilon {eps:g} exceeds this node's per-query cap {ds.max_epsilon_per_query:g} "
                             f"for {ds.name!r} (manifest max_epsilon_per_query): refused")
        self.node.ledger.charge(ds, job_id=job_id, kind="join", principal=request.principal,
                                plan_digest=plan.digest(), epsilon=eps, delta=delta)
        secret = PrivateKey.generate()
        key = bytes(secret.public_key)
        statement = key_statement(job_id, self.node.node_id, request.side, key)
        signature = self._signer.sign(statement) if self._signer is not None else b""
        certificate = self._signer.certificate if self._signer is not None else b""
        with self._lock:
            while len(self._jobs) >= MAX_OPEN_JOINS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = JoinJob(plan, request.side, request.peer, ds, public, noise, secret)
        # Start precomputing every obfuscator this side will use now (public counts from the plan):
        # A encrypts its padded rows and re-randomises B's aligned list; B encrypts its dummies and
        # re-randomises A's list plus them. The background workers run while the rounds travel.
        need = (plan.a.max_rows + plan.b.max_rows if request.side == "A"
                else plan.a.max_rows + 2 * plan.dummy_max)
        self.he.obfuscator_pool(public).fill(min(need, _PREFILL_MAX))
        return JoinKeysReply(key=key, signature=signature, certificate=certificate)

    def seed(self, job_id: str, request: JoinSeed) -> JoinSealed:
        """Check the peer's key (its certificate and signature when this deployment has a PKI) and
        send this node's half of the dummy seed, sealed for it."""
        job = self._job(job_id, "keys")
        peer_side = "B" if job.side == "A" else "A"
        if len(request.peer_key) != 32:
            raise InvalidKey("the other holder's join key is not an X25519 key")
        if self._verifier is not None:
            if not request.peer_certificate or not request.peer_signature:
                raise InvalidKey("the other holder's join key is not signed; this node requires signed keys")
            self._verifier.identity(request.peer_certificate)
            statement = key_statement(job_id, job.peer, peer_side, request.peer_key)
            if not signature_valid(request.peer_certificate, statement, request.peer_signature):
                raise InvalidKey("the other holder's join key signature does not verify")
        job.box = Box(job.secret, PublicKey(request.peer_key))
        job.seed_half = os.urandom(32)
        job.step = "seed"
        # The plan's digest travels with the seed half: the gateway shows each holder the plan, and
        # a gateway showing the two holders different plans is caught before a row is read.
        digest = bytes.fromhex(job.plan.digest())
        return JoinSealed(sealed=self._seal(job_id, job, b"seed", job.seed_half + digest))

    # ------------------------------------------------------------------ round 1: blind (and encrypt)
    def begin(self, job_id: str, request: JoinBegin) -> JoinSealed:
        """Ion et al. 2020 §3 Round 1: [s·H(d, k)] in a secret order, padded to max_rows with random
        points; A adds Enc(packed indicators) of each row (Enc(0) for padding)."""
        job = self._job(job_id, "seed")
        opened = self._open(job_id, job, b"seed", request.sealed)
        if len(opened) != 64:
            raise BadRequest("the other holder's seed half is malformed")
        peer_half, peer_digest = opened[:32], opened[32:]
        if not hmac.compare_digest(peer_digest, bytes.fromhex(job.plan.digest())):
            raise BadRequest("the other holder was given another plan for this job by the gateway: refused")
        halves = (job.seed_half, peer_half) if job.side == "A" else (peer_half, job.seed_half)
        job.seed = hashlib.sha256(_SEED_CONTEXT + halves[0] + halves[1]).digest()
        job.dummies = dummy_count(job.plan, job.seed)
        side = job.plan.side(job.side)
        rows = load_rows(self.node, job.ds, job.plan, side, is_b=job.side == "B")
        job.rows = rows
        job.scalar = job_scalar = BlindingScalar()
        pad = side.max_rows - len(rows.keys)
        points = [job_scalar.blind_one(hash_to_group(side.join_domain, k)) for k in rows.keys]
        points += [job_scalar.blind_one(random_point()) for _ in range(pad)]
        # Padding goes to random positions: the whole list is in one secret order.
        order = shuffled(side.max_rows)
        if job.side == "B":
            # B keeps its rows in the order it sent them (sigma_B): the aligned list comes back so.
            cells = rows.cells + [None] * pad
            values = rows.values + [()] * pad
            rows.cells = [cells[i] for i in order]
            rows.values = [values[i] for i in order]
            rows.keys = []
            payload = b"".join(points[i] for i in order)
        else:
            # One plaintext per row: 1 in the slot of its A-cell (0 everywhere when WHERE fails or
            # for padding); Ion et al. 2020 §3 Round 1's encrypted associated value, packed.
            pts = [1 << (c * job.plan.slot_bits) if c is not None else 0 for c in rows.cells] + [0] * pad
            cts = self._encrypt(job.public, [pts[i] for i in order])
            payload = b"".join(points[i] for i in order) + self._cts_to_bytes(job.public, cts)
            job.rows = None
        job.step = "begin"
        return JoinSealed(sealed=self._seal(job_id, job, b"blinded", payload))

    # ------------------------------------------------------------------ round 2: double blind, tags
    def double_blind(self, job_id: str, request: JoinDoubleBlind) -> JoinTags:
        """Round 2: tag(s·P) of every peer point (each checked), the D matched dummy tags and random
        tags up to 2·shift, in a fresh secret order; B also re-randomises A's ciphertexts."""
        job = self._job(job_id, "begin")
        plan = job.plan
        body = self._open(job_id, job, b"blinded", request.sealed)
        peer = plan.side("B" if job.side == "A" else "A")
        n_pts = peer.max_rows
        if len(body) < n_pts * POINT_BYTES:
            raise BadRequest("the other holder's blinded keys are truncated")
        pts = [body[i * POINT_BYTES:(i + 1) * POINT_BYTES] for i in range(n_pts)]
        scalar = job.scalar
        assert scalar is not None
        tags = [tag(scalar.blind_one(p)) for p in pts]
        extra = dummy_tags(job.seed, job.dummies) + [os.urandom(TAG_BYTES) for _ in range(plan.dummy_max - job.dummies)]
        all_tags = tags + extra
        order = shuffled(len(all_tags))
        out_tags = b"".join(all_tags[i] for i in order)
        job.scalar = None  # the scalar is not needed again: dropped
        if job.side == "B":
            cts = self._cts_from_bytes(job.public, body[n_pts * POINT_BYTES:], n_pts)
            cts += self._encrypt(job.public, [0] * len(extra))
            cts = self._rerandomise(job.public, [cts[i] for i in order])
            job.step = "double_blind"
            return JoinTags(tags=out_tags, ciphertexts=self._cts_to_bytes(job.public, cts))
        # A: remember where B's rows went (tau), to put the aligned list back in B's order.
        job.tau = [i if i < n_pts else -1 for i in order]
        job.step = "double_blind"
        return JoinTags(tags=out_tags, ciphertexts=b"")

    # ------------------------------------------------------------------ round 4 (A): unpermute
    def unpermute(self, job_id: str, request: JoinUnpermute) -> JoinSealed:
        """A applies tau^-1 to the gateway's aligned list, keeps B's rows, re-randomises, seals for B."""
        job = self._job(job_id, "double_blind")
        if job.side != "A":
            raise BadRequest("join_unpermute is the indicator side's round")
        n_b = job.plan.b.max_rows
        cts = self._cts_from_bytes(job.public, request.ciphertexts, len(job.tau))
        back = [0] * n_b
        for pos, j in enumerate(job.tau):
            if j >= 0:
                back[j] = cts[pos]
        out = self._rerandomise(job.public, back)
        job.step = "unpermute"
        return JoinSealed(sealed=self._seal(job_id, job, b"aligned", self._cts_to_bytes(job.public, out)))

    # ------------------------------------------------------------------ round 5 (B): aggregate
    def aggregate(self, job_id: str, request: JoinAggregate) -> JoinCiphertexts:
        """B: C_{h,m} = prod_j ct_j^(v_jm) over its rows in B-cell h (WHERE passed), times Enc(its
        noise share); one ciphertext per (B-cell, measurement), slots = A-cells."""
        job = self._job(job_id, "double_blind")
        if job.side != "B":
            raise BadRequest("join_aggregate is the value side's round")
        plan = job.plan
        body = self._open(job_id, job, b"aligned", request.sealed)
        cts = self._cts_from_bytes(job.public, body, plan.b.max_rows)
        rows = job.rows
        assert rows is not None
        n2 = gmpy2.mpz(job.public.n_square)
        n_meas = len(plan.inner.measurements)
        acc = [[gmpy2.mpz(1)] * n_meas for _ in plan.b.cells]
        for ct, cell, values in zip(cts, rows.cells, rows.values, strict=True):
            if cell is None:
                continue
            c = gmpy2.mpz(ct)
            for mi, v in enumerate(values):
                if v:
                    acc[cell][mi] = acc[cell][mi] * gmpy2.powmod(c, v, n2) % n2
        noise = [self._noise_plaintexts(job, mi, h) for h in range(len(plan.b.cells)) for mi in range(n_meas)]
        enc_noise = self._encrypt(job.public, noise)
        out = [int(acc[h][mi] * enc_noise[h * n_meas + mi] % n2) for h in range(len(plan.b.cells))
               for mi in range(n_meas)]
        self._finish(job_id)
        return JoinCiphertexts(ciphertexts=self._cts_to_bytes(job.public, out))

    # ------------------------------------------------------------------ round 6 (A): noise
    def add_noise(self, job_id: str, request: JoinNoise) -> JoinCiphertexts:
        """A multiplies each output by Enc(its own noise share); then forgets the job."""
        job = self._job(job_id, "unpermute")
        plan = job.plan
        n_meas = len(plan.inner.measurements)
        cts = self._cts_from_bytes(job.public, request.ciphertexts, len(plan.b.cells) * n_meas)
        noise = [self._noise_plaintexts(job, mi, h) for h in range(len(plan.b.cells)) for mi in range(n_meas)]
        enc = self._encrypt(job.public, noise)
        n2 = job.public.n_square
        out = [c * e % n2 for c, e in zip(cts, enc, strict=True)]
        self._finish(job_id)
        return JoinCiphertexts(ciphertexts=self._cts_to_bytes(job.public, out))

    def _finish(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)


def check_join_side(ds: DatasetSpec, plan: JoinPlan, side: JoinSide, *, is_b: bool) -> None:
    """This node's own check of its side of a join plan against its manifest (public inputs only):
    the key column is a ``join`` column of the plan's domain; every column the plan reads here is
    declared exactly as the plan says (type, bounds, values, uses); the padded size is its own
    ``max_rows``; the dummies are not below what their (epsilon, delta) require. B also checks
    that every measurement's per-row bound is its own column's."""
    key = ds.column(side.key)
    if key is None or "join" not in key.uses or key.join_domain != side.join_domain:
        raise BadRequest(f"column {side.key!r} of {ds.name!r} is not a {side.join_domain!r} join key here")
    if side.max_rows != ds.max_rows:
        raise BadRequest(f"the plan pads {ds.name!r} to {side.max_rows} rows; this node declares max_rows "
                         f"{ds.max_rows}")
    for c in side.columns:
        mine = ds.column(c.name)
        if mine is None or mine.to_dict() != c.to_dict():
            raise BadRequest(f"plan does not match this node's manifest: column {c.name!r} of {ds.name!r}")
    used = {c.name for c in side.columns}
    # The gateway builds the plan and this node cannot re-derive it from the SQL (it holds one of
    # the two manifests): each use the plan makes of this node's columns is checked against this
    # node's own ``uses`` here, as ``query.parse`` does for a single dataset (issue #16 Build 2).
    if key.name in used or key.name in side.groups:
        raise BadRequest(f"plan reads the join key {key.name!r} of {ds.name!r} outside ON: a key never leaves "
                         "this node except blinded; refused")
    for g in side.groups:
        if g not in used:
            raise BadRequest(f"plan groups by {g!r}, which it does not declare")
        if "group" not in (ds.column(g) or key).uses:
            raise BadRequest(f"plan groups by {g!r} of {ds.name!r}, which this node does not open to group")
    declared = [tuple((ds.column(g) or key).values or ()) for g in side.groups]
    if side.cells != tuple(itertools.product(*declared)):
        raise BadRequest(f"plan's cells of {ds.name!r} are not the declared values of its group columns: refused")
    for c in predicate_columns(side.where) if side.where is not None else ():
        mine = ds.column(c)
        if mine is None or c not in used or "filter" not in mine.uses:
            raise BadRequest(f"plan filters on {c!r} of {ds.name!r}, which this node does not open to filter")
    if not (math.isfinite(plan.card_epsilon) and plan.card_epsilon > 0 and math.isfinite(plan.card_delta)
            and 0 < plan.card_delta < 1):
        raise BadRequest("the plan's dummies' (epsilon, delta) is out of range (epsilon > 0, 0 < delta < 1): refused")
    if plan.dummy_shift < dummy_shift_for(plan.card_epsilon, plan.card_delta):
        raise BadRequest("the plan's matched dummies are fewer than their (epsilon, delta) require: refused")
    if is_b:
        for m in plan.inner.measurements:
            if m.column is None:
                continue
            mine = ds.column(m.column)
            if mine is None or m.column not in used:
                raise BadRequest(f"plan aggregates {m.column!r}, not a column of {ds.name!r} here")
            if "aggregate" not in mine.uses:
                raise BadRequest(f"plan aggregates {m.column!r} of {ds.name!r}, which this node does not open to "
                                 "aggregate")
            b = _bound_magnitude(mine)
            bound = 1.0 if m.kind == "count" else (b if m.kind == "sum" else b * b)
            if m.bound != bound:
                raise BadRequest(f"plan bounds {m.key} by {m.bound:g}; this node's manifest gives {bound:g}")
    elif any(m.column is not None and m.column not in {c.name for c in plan.b.columns}
             for m in plan.inner.measurements):
        raise BadRequest("plan aggregates a column of the indicator side")


__all__ = ["JoinTasks", "check_join_side", "dummy_count", "dummy_tags", "key_statement"]
