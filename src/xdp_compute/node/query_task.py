"""Round 0 of a federated query on the node: local pushdown SQL, then this node's noise share.

The node re-validates the plan against its own manifest, runs it on its own engine (values
clipped to declared bounds inside the SQL), fixed-point encodes the cell totals into Z_2^64 and
adds a distributed-discrete-Gaussian share N_Z(0, sigma_node^2) per cell (Kairouz, Liu, Steinke
2021), sampled exactly (Canonne, Kamath, Steinke 2020) from the OS CSPRNG.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from fractions import Fraction
from typing import Any

import numpy as np

from xdp_compute.errors import BadRequest
from xdp_compute.node.jobs import provider
from xdp_compute.privacy import sample_discrete_gaussian_vector
from xdp_compute.privacy.randomness import RandomnessSource, SeededRandomness, SystemRandomness
from xdp_compute.query import QueryPlan

log = logging.getLogger("xdp.node.query")


_counter = itertools.count()


def noise_source(node_name: str) -> RandomnessSource:
    """The OS CSPRNG; a seeded DRBG only when the test-only XDP_TEST_NOISE_SEED is set.

    Seeded noise is keyed by (seed, node, n-th noisy task on this node), so a test that runs
    queries one after another gets the same noise every run and can recompute it.
    """
    seed = os.environ.get("XDP_TEST_NOISE_SEED")
    if seed:
        log.warning("XDP_TEST_NOISE_SEED is set: noise is reproducible and NOT private (tests only)")
        return SeededRandomness(seeded_noise_key(seed, node_name, next(_counter)))
    return SystemRandomness()


def seeded_noise_key(seed: str, node_name: str, k: int) -> bytes:
    return f"{seed}:{node_name}:{k}".encode()


def add_noise(vec: np.ndarray, plan: QueryPlan, sigma_node2: dict[str, Fraction], rng: RandomnessSource) -> np.ndarray:
    """Add one noise share per cell and measurement, mod 2^64 (two's complement)."""
    out = vec.copy()
    n_cells = len(plan.cells)
    for j, m in enumerate(plan.measurements):
        s2 = sigma_node2.get(m.key)
        if s2 is None:
            raise BadRequest(f"plan carries no noise scale for measurement {m.key!r}")
        noise = sample_discrete_gaussian_vector(s2, n_cells, rng)
        for c in range(n_cells):
            out[plan.index(c, j)] = np.uint64((int(out[plan.index(c, j)]) + noise[c]) % (1 << 64))
    return out


def parse_sigmas(raw: Any) -> dict[str, Fraction]:
    if not isinstance(raw, dict):
        raise BadRequest("noise scales must be an object")
    try:
        out = {str(k): Fraction(str(v)) for k, v in raw.items()}
    except (ValueError, ZeroDivisionError):
        raise BadRequest("noise scales must be rationals 'p/q'") from None
    if any(v < 0 for v in out.values()):
        raise BadRequest("noise scales must be non-negative")
    return out


def local_noisy_vector(executor: Any, job_id: str, header: dict[str, Any]) -> tuple[QueryPlan, np.ndarray]:
    from xdp_compute.node.sources import run_local_query

    plan = QueryPlan.from_dict(header.get("plan"))
    ds = executor.manifest.dataset(plan.dataset)
    if ds is None:
        raise BadRequest(f"this node does not hold dataset {plan.dataset!r}")
    vec = run_local_query(plan, executor.manifest, ds)
    delay = float(os.environ.get("XDP_TEST_NODE_DELAY", "0"))  # test-only: a slow node
    if delay:
        time.sleep(delay)
    busy = int(os.environ.get("XDP_TEST_NODE_BUSY", "0"))  # test-only: a node whose task holds the GIL
    if busy:
        logging.getLogger("xdp.node").warning("XDP_TEST_NODE_BUSY is set: holding the GIL (tests only)")
        sum(range(busy))  # one C call: no other thread of this process runs until it returns
    return plan, add_noise(vec, plan, parse_sigmas(header.get("sigma_node2")),
                           noise_source(executor.manifest.node_name))


@provider("query_begin")
def query_begin(executor: Any, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]
                ) -> tuple[np.ndarray, dict[str, Any]]:
    _, vec = local_noisy_vector(executor, job_id, header)
    return vec, {}
