"""Round 0 of a federated query on the node: local pushdown SQL, then this node's noise share.

The node re-validates the plan against its own manifest, runs it on its own engine (values
clipped to declared bounds inside the SQL), fixed-point encodes the cell totals into Z_2^64 and
adds a distributed-discrete-Gaussian share N_Z(0, sigma_node^2) per cell (Kairouz, Liu, Steinke
2021), sampled exactly (Canonne, Kamath, Steinke 2020) from the OS CSPRNG. The noisy vector is
this node's input to secure aggregation (``tasks.secagg``).

Before any of that the node enforces its own policy (issue #12): the noise it must add is
recomputed from its own manifest and the declared (epsilon, delta) (``node.policy``), and the
job is charged to its own ledger and journal (``node.ledger``) — in Round 0, synchronously
(``admit_query_task``). The data step itself (``noisy_vector``) then runs in the background
while secure aggregation sets up (issue #13); Round 2 waits for its vector.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction

import numpy as np

from xdp_compute.contract import HeQueryBegin, QueryBegin, QueryBegun
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import BadRequest
from xdp_compute.node.policy import check_query_task
from xdp_compute.node.sources import run_checked_query
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.secagg import SecAggSessions
from xdp_compute.privacy import sample_discrete_gaussian_vector
from xdp_compute.privacy.randomness import RandomnessSource, SeededRandomness, SystemRandomness
from xdp_compute.query import QueryPlan, validate_plan_for

log = logging.getLogger("xdp.node.query")


def noise_source(node: NodeContext) -> RandomnessSource:
    """The OS CSPRNG; a seeded DRBG only when the test-only XDP_TEST_NOISE_SEED is set.

    Seeded noise is keyed by (seed, node, n-th noisy task on this node), so a test that runs
    queries one after another gets the same noise every run and can recompute it.
    """
    seed = os.environ.get("XDP_TEST_NOISE_SEED")
    if seed:
        log.warning("XDP_TEST_NOISE_SEED is set: noise is reproducible and NOT private (tests only)")
        return SeededRandomness(seeded_noise_key(seed, node.manifest.node_name, node.next_noisy_task()))
    return SystemRandomness()


def seeded_noise_key(seed: str, node_name: str, k: int) -> bytes:
    return f"{seed}:{node_name}:{k}".encode()


def add_noise(vec: np.ndarray, plan: QueryPlan, sigma_node2: Mapping[str, Fraction],
              rng: RandomnessSource) -> np.ndarray:
    """Add one noise share per cell and measurement, mod 2^64 (two's complement)."""
    out = vec.copy()
    n_cells = len(plan.cells)
    for j, m in enumerate(plan.measurements):
        s2 = sigma_node2.get(m.key)
        if s2 is None:
            raise BadRequest(f"plan carries no noise scale for measurement {m.key!r}")
        if s2 < 0:
            raise BadRequest(f"noise scale for measurement {m.key!r} is negative")
        noise = sample_discrete_gaussian_vector(s2, n_cells, rng)
        for c in range(n_cells):
            out[plan.index(c, j)] = np.uint64((int(out[plan.index(c, j)]) + noise[c]) % (1 << 64))
    return out


def _test_only_slowdown() -> None:
    delay = float(os.environ.get("XDP_TEST_NODE_DELAY", "0"))  # test-only: a slow node
    if delay:
        time.sleep(delay)
    busy = int(os.environ.get("XDP_TEST_NODE_BUSY", "0"))  # test-only: a node whose task holds the GIL
    if busy:
        logging.getLogger("xdp.node").warning("XDP_TEST_NODE_BUSY is set: holding the GIL (tests only)")
        sum(range(busy))  # one C call: no other thread of this process runs until it returns


# Plans this worker has re-derived from its manifest (issue #13: the re-derivation re-parses
# the SQL, ~1 ms per task): (dataset, canonical plan JSON) -> the plan. The same plan asked again
# against the same dataset object is the same deterministic re-derivation.
_VALIDATED: dict[tuple[int, str], tuple[DatasetSpec, QueryPlan]] = {}
_VALIDATED_MAX = 256
_validated_lock = threading.Lock()


def validated_plan(plan: QueryPlan, ds: DatasetSpec) -> QueryPlan:
    """``validate_plan_for(plan, ds)``, remembered for plans that passed (refusals are not kept)."""
    key = (id(ds), plan.to_json())
    with _validated_lock:
        hit = _VALIDATED.get(key)
    if hit is not None and hit[0] is ds:
        return hit[1]
    checked = validate_plan_for(plan, ds)
    with _validated_lock:
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.pop(next(iter(_VALIDATED)))
        _VALIDATED[key] = (ds, checked)  # ``ds`` held: its id is not reused while the entry lives
    return checked


def admit_query_task(node: NodeContext, job_id: str, kind: str, request: QueryBegin | HeQueryBegin,
                     *, durable: bool = True) -> tuple[QueryPlan, DatasetSpec]:
    """The node's own checks of a query task and its charge, all before a row is read.

    In this order (so a refusal depends on public inputs only): the plan re-derived from this
    node's manifest; the noise recomputed by this node's policy and the task's ``sigma_node2``
    refused if below it (``node.policy``); the job charged to this node's own ledger and
    journaled (``node.ledger``; refused past its own budget), on disk before this returns —
    or, with ``durable=False``, once the caller's data step has called ``node.ledger.sync()``,
    which it does before it reads a row. Returns the re-derived plan and this node's dataset.
    """
    plan = QueryPlan.from_dict(request.plan)
    ds = node.manifest.dataset(plan.dataset)
    if ds is None:
        raise BadRequest(f"this node does not hold dataset {plan.dataset!r}")
    if ds.max_rows > plan.max_rows_per_node:
        # The plan's fixed-point headroom assumes at most plan.max_rows_per_node rows here.
        raise BadRequest(f"this node declares max_rows {ds.max_rows} for {plan.dataset!r}, more than the plan's "
                         f"{plan.max_rows_per_node}")
    plan = validated_plan(plan, ds)
    own = check_query_task(ds, plan, request.sigma_node2, request.noise_basis, request.secagg,
                           node.manifest.max_colluding_nodes)
    node.ledger.charge(ds, job_id=job_id, kind=kind, principal=request.principal, plan_digest=plan.digest(),
                       epsilon=own.epsilon, delta=own.delta, durable=durable)
    return plan, ds


def noisy_vector(node: NodeContext, plan: QueryPlan, ds: DatasetSpec, sigma_node2: Mapping[str, Fraction],
                 rng: RandomnessSource, *, sync_ledger: bool = False) -> np.ndarray:
    """The data step of an admitted task (``admit_query_task``): the pushdown SQL on this node's
    engine, then its noise share. Its errors (a bad source, a fixed-point overflow) may depend
    on the rows. ``sync_ledger``: first put the task's charge on disk (admitted with
    ``durable=False``)."""
    if sync_ledger:
        node.ledger.sync()  # the charge is durable before a row is read, as in admit_query_task
    vec = run_checked_query(plan, node.manifest, ds, sources=node.sources)
    _test_only_slowdown()
    return add_noise(vec, plan, sigma_node2, rng)


def declared_parties(request: QueryBegin | HeQueryBegin) -> dict[str, str]:
    """node -> party as the task's noise was calibrated (every node its own party when undeclared)."""
    basis = request.noise_basis
    return dict(basis.parties or {}) if basis is not None else {}


class QueryTasks:
    """``query_begin``: the plain federated query's round 0, and the data steps of both queries.

    The data step runs in the background (issue #13): Round 0 answers with this node's keys as
    soon as its checks and its charge are done, and the rows are read and the noise drawn while
    the gateway runs Round 1 (ShareKeys) and this node expands its masks; Round 2
    (MaskedInputCollection) waits for the vector. A data step that fails makes Round 2 fail: the
    gateway counts that as a refusal, as it did one in Round 0 (``gateway.secure_sum``). The
    encrypted query (``tasks.he``) starts its data step here too.
    """

    #: Data steps running at once; more wait for a free thread (the worker runs 4 tasks at once).
    DATA_STEPS = 4

    def __init__(self, node: NodeContext, sessions: SecAggSessions) -> None:
        self.node, self.sessions = node, sessions
        self._data_steps = ThreadPoolExecutor(max_workers=self.DATA_STEPS, thread_name_prefix="data-step")

    def begin(self, job_id: str, request: QueryBegin) -> QueryBegun:
        """Check and charge, start the data step, and advertise keys at once (Round 0)."""
        config = self.sessions.config_for(self.node.node_id, request.secagg)
        # The charge's fsync moves into the data step, ahead of its first row (``durable=False``).
        _, vector = self.admit_and_start(job_id, "query", request, config.vector_length)
        try:
            keys = self.sessions.start(job_id, self.node.node_id, config, vector,
                                       parties=declared_parties(request))
        except BaseException:
            vector.cancel()
            raise
        return QueryBegun(secagg=keys)

    def admit_and_start(self, job_id: str, kind: str, request: QueryBegin | HeQueryBegin, vector_length: int
                        ) -> tuple[QueryPlan, Future[np.ndarray]]:
        """The node's checks and charge (``admit_query_task``, its fsync left to the data step),
        then the data step started in the background: (the re-derived plan, the noisy vector's
        future). Refused before a row is read when the plan's vector is not the session's."""
        plan, ds = admit_query_task(self.node, job_id, kind, request, durable=False)
        if plan.vector_length != vector_length:  # before a row is read (it was after, in start)
            raise BadRequest("the plan's vector does not match the session's vector length")
        # The noise source is taken here, in task order (test-only seeded noise is keyed by it).
        rng = noise_source(self.node)
        return plan, self._data_steps.submit(noisy_vector, self.node, plan, ds, request.sigma_node2, rng,
                                             sync_ledger=True)

    def close(self) -> None:
        """Stop taking data steps (the worker is ending)."""
        self._data_steps.shutdown(wait=False, cancel_futures=True)
