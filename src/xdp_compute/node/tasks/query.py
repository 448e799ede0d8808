"""Round 0 of a federated query on the node: local pushdown SQL, then this node's noise share.

The node re-validates the plan against its own manifest, runs it on its own engine (values
clipped to declared bounds inside the SQL), fixed-point encodes the cell totals into Z_2^64 and
adds a distributed-discrete-Gaussian share N_Z(0, sigma_node^2) per cell (Kairouz, Liu, Steinke
2021), sampled exactly (Canonne, Kamath, Steinke 2020) from the OS CSPRNG. The noisy vector is
this node's input to secure aggregation (``tasks.secagg``).

Before any of that the node enforces its own policy (issue #12): the noise it must add is
recomputed from its own manifest and the declared (epsilon, delta) (``node.policy``), and the
job is charged to its own ledger and journal (``node.ledger``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from xdp_compute.contract import HeQueryBegin, QueryBegin, QueryBegun
from xdp_compute.errors import BadRequest
from xdp_compute.node.policy import check_query_task
from xdp_compute.node.sources import run_local_query
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


def local_noisy_vector(node: NodeContext, job_id: str, kind: str, request: QueryBegin | HeQueryBegin
                       ) -> tuple[QueryPlan, np.ndarray]:
    """This node's vector for the task's plan plus its noise share, after the node's own checks.

    In this order, all before a row is read (so a refusal depends on public inputs only): the
    plan re-derived from this node's manifest; the noise recomputed by this node's policy and
    the task's ``sigma_node2`` refused if below it (``node.policy``); the job charged to this
    node's own ledger and journaled (``node.ledger``; refused past its own budget).
    """
    plan = QueryPlan.from_dict(request.plan)
    ds = node.manifest.dataset(plan.dataset)
    if ds is None:
        raise BadRequest(f"this node does not hold dataset {plan.dataset!r}")
    if ds.max_rows > plan.max_rows_per_node:
        # The plan's fixed-point headroom assumes at most plan.max_rows_per_node rows here.
        raise BadRequest(f"this node declares max_rows {ds.max_rows} for {plan.dataset!r}, more than the plan's "
                         f"{plan.max_rows_per_node}")
    plan = validate_plan_for(plan, ds)
    own = check_query_task(ds, plan, request.sigma_node2, request.noise_basis, request.secagg,
                           node.manifest.max_colluding_nodes)
    node.ledger.charge(ds, job_id=job_id, kind=kind, principal=request.principal, plan_digest=plan.digest(),
                       epsilon=own.epsilon, delta=own.delta)
    vec = run_local_query(plan, node.manifest, ds, sources=node.sources)
    _test_only_slowdown()
    return plan, add_noise(vec, plan, request.sigma_node2, noise_source(node))


def declared_parties(request: QueryBegin | HeQueryBegin) -> dict[str, str]:
    """node -> party as the task's noise was calibrated (every node its own party when undeclared)."""
    basis = request.noise_basis
    return dict(basis.parties or {}) if basis is not None else {}


class QueryTasks:
    """``query_begin``: the plain federated query's round 0."""

    def __init__(self, node: NodeContext, sessions: SecAggSessions) -> None:
        self.node, self.sessions = node, sessions

    def begin(self, job_id: str, request: QueryBegin) -> QueryBegun:
        """Compute the noisy vector, then advertise keys for its secure aggregation (Round 0)."""
        config = self.sessions.config_for(self.node.node_id, request.secagg)
        _, vec = local_noisy_vector(self.node, job_id, "query", request)
        return QueryBegun(secagg=self.sessions.start(job_id, self.node.node_id, config, vec,
                                                     parties=declared_parties(request)))
