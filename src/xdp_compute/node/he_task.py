"""HE tasks on the node: Paillier encrypted partials and CKKS encrypted scoring."""

from __future__ import annotations

import threading
from typing import Any

from xdp_compute.crypto.paillier import ObfuscatorPool, PackingScheme, PaillierPublic, encrypt_partials
from xdp_compute.errors import BadRequest
from xdp_compute.node.executors import TaskOutcome
from xdp_compute.node.query_task import local_noisy_vector
from xdp_compute.query.plan import from_ring

MAX_KEYS_CACHED = 8
_pools_lock = threading.Lock()


def obfuscator_pool(executor: Any, public: PaillierPublic) -> ObfuscatorPool:
    """One pool per analyst key: r^n mod n^2 is precomputed in a background process after first use,
    so later queries under the same key encrypt without exponentiations on the critical path."""
    with _pools_lock:
        pools: dict[str, ObfuscatorPool] = executor.state.setdefault("paillier_pools", {})
        pool = pools.get(public.fingerprint)
        if pool is None:
            if len(pools) >= MAX_KEYS_CACHED:
                _, old = pools.popitem()
                old.close()
            pool = pools[public.fingerprint] = ObfuscatorPool(public, target=32, workers=1)
        return pool


def he_query_partial(executor: Any, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
    """Noisy partials (same plan and noise share as the plain path) encrypted under the analyst's key."""
    try:
        public = PaillierPublic.from_dict(header.get("public_key") or {})
        scheme = PackingScheme.from_dict(header.get("scheme") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise BadRequest(f"bad encryption parameters: {type(e).__name__}") from None
    _, vec = local_noisy_vector(executor, job_id, header)
    values = [from_ring(int(x)) for x in vec]
    enc = encrypt_partials(public, values, scheme, pool=obfuscator_pool(executor, public))
    return TaskOutcome(ok=True, blobs={"ciphertext": enc.to_bytes(public)})


def he_score_partial(executor: Any, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
    """Encrypted per-group score sums and noisy counts: w.x never appears here in plaintext."""
    import os

    import numpy as np

    from xdp_compute.crypto import ckks
    from xdp_compute.node.query_task import noise_source, parse_sigmas
    from xdp_compute.node.sources import run_local_query
    from xdp_compute.privacy import sample_discrete_gaussian_vector
    from xdp_compute.query import QueryPlan

    plan = QueryPlan.from_dict(header.get("plan"))
    ds = executor.manifest.dataset(plan.dataset)
    if ds is None:
        raise BadRequest(f"this node does not hold dataset {plan.dataset!r}")
    frac = int(header.get("score_frac_bits", 16))
    if not 0 <= frac <= 30:
        raise BadRequest("score_frac_bits out of range")
    sig = parse_sigmas(header.get("sigma_node2"))
    if set(sig) != {"score", "count"}:
        raise BadRequest("scoring needs noise scales for 'score' and 'count'")
    vec = run_local_query(plan, executor.manifest, ds)  # clipped sums per cell, fixed point
    cells = len(plan.cells)
    sums = [mm for mm in plan.measurements if mm.kind == "sum"]
    count_j = plan.measurement_index("count", None)
    d = len(sums)
    matrix = np.zeros((2 * cells, d + 2))
    for c in range(cells):
        count = from_ring(int(vec[plan.index(c, count_j)]))
        for k, mm in enumerate(sums):
            j = plan.measurement_index("sum", mm.column)
            matrix[c, k] = from_ring(int(vec[plan.index(c, j)])) / mm.scale
        matrix[c, d] = count          # times the bias weight
        matrix[cells + c, d + 1] = count  # times the count weight: the noisy group size
    rng = noise_source(executor.manifest.node_name)
    if os.environ.get("XDP_TEST_HE_NO_DP_NOISE"):  # test-only: check HE arithmetic against plaintext
        import logging

        logging.getLogger("xdp.node.he").warning("XDP_TEST_HE_NO_DP_NOISE is set: scores carry NO DP noise")
        sig = {"score": sig["score"] * 0, "count": sig["count"] * 0}
    score_noise = np.asarray(sample_discrete_gaussian_vector(sig["score"], cells, rng), dtype=np.float64) / 2**frac
    count_noise = np.asarray(sample_discrete_gaussian_vector(sig["count"], cells, rng), dtype=np.float64)
    flood = float(os.environ.get("XDP_HE_FLOOD_SIGMA", str(2.0**-8)))
    out = ckks.score_partial(blobs.get("context", b""), blobs.get("weights", b""), matrix,
                             np.concatenate([score_noise, count_noise]), flood)
    return TaskOutcome(ok=True, blobs={"scores": out})


def install(executor: Any) -> None:
    executor.handlers["he_query_partial"] = lambda job_id, header, blobs: he_query_partial(
        executor, job_id, header, blobs)
    executor.handlers["he_score_partial"] = lambda job_id, header, blobs: he_score_partial(
        executor, job_id, header, blobs)
