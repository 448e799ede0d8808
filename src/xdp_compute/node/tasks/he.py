"""HE tasks on the node: Paillier encrypted partials and CKKS encrypted scoring.

The HE libraries are the optional ``he`` extra: they are imported when an HE task arrives, so a
node without them still answers every other task (and refuses these with a clear message).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from xdp_compute.contract import HeQueryPartial, HeQueryReply, HeScorePartial, HeScoreReply
from xdp_compute.errors import BadRequest
from xdp_compute.node.sources import run_local_query
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.query import local_noisy_vector, noise_source
from xdp_compute.privacy import sample_discrete_gaussian_vector
from xdp_compute.query import QueryPlan
from xdp_compute.query.plan import from_ring

if TYPE_CHECKING:
    from xdp_compute.crypto.paillier import ObfuscatorPool, PaillierPublic

MAX_KEYS_CACHED = 8
MAX_SCORE_FRAC_BITS = 30  # this node's own limit, tighter than the contract's 40 (the gateway sends 16)


def _he_module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"xdp_compute.crypto.{name}")
    except ImportError:
        raise BadRequest("this node has no HE support installed (pip install 'xdp-compute[he]')") from None


class HeTasks:
    """``he_query_partial`` and ``he_score_partial``; keeps one obfuscator pool per analyst key."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self._pools: dict[str, ObfuscatorPool] = {}
        self._pools_lock = threading.Lock()

    def obfuscator_pool(self, public: PaillierPublic) -> ObfuscatorPool:
        """One pool per analyst key: r^n mod n^2 is precomputed in a background process after first
        use, so later queries under the same key encrypt without exponentiations on the critical path."""
        paillier = _he_module("paillier")
        with self._pools_lock:
            pool = self._pools.get(public.fingerprint)
            if pool is None:
                if len(self._pools) >= MAX_KEYS_CACHED:
                    _, old = self._pools.popitem()
                    old.close()
                pool = self._pools[public.fingerprint] = paillier.ObfuscatorPool(public, target=32, workers=1)
            return pool

    def close(self) -> None:
        """Stop every pool's background process."""
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def query_partial(self, job_id: str, request: HeQueryPartial) -> HeQueryReply:
        """Noisy partials (same plan and noise share as the plain path) encrypted under the analyst's key."""
        paillier = _he_module("paillier")
        try:
            public = paillier.PaillierPublic.from_dict(request.public_key)
            scheme = paillier.PackingScheme.from_dict(request.scheme)
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"bad encryption parameters: {type(e).__name__}") from None
        _, vec = local_noisy_vector(self.node, request.plan, request.sigma_node2)
        values = [from_ring(int(x)) for x in vec]
        enc = paillier.encrypt_partials(public, values, scheme, pool=self.obfuscator_pool(public))
        return HeQueryReply(ciphertext=enc.to_bytes(public))

    def score_partial(self, job_id: str, request: HeScorePartial) -> HeScoreReply:
        """Encrypted per-group score sums and noisy counts: w.x never appears here in plaintext."""
        ckks = _he_module("ckks")
        plan = QueryPlan.from_dict(request.plan)
        ds = self.node.manifest.dataset(plan.dataset)
        if ds is None:
            raise BadRequest(f"this node does not hold dataset {plan.dataset!r}")
        frac = request.score_frac_bits
        if frac > MAX_SCORE_FRAC_BITS:
            raise BadRequest(f"score_frac_bits {frac} is above this node's limit {MAX_SCORE_FRAC_BITS}")
        sig = dict(request.sigma_node2)
        if set(sig) != {"score", "count"}:
            raise BadRequest("scoring needs noise scales for 'score' and 'count'")
        if any(v < 0 for v in sig.values()):
            raise BadRequest("noise scales must be non-negative")
        vec = run_local_query(plan, self.node.manifest, ds)  # clipped sums per cell, fixed point
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
        rng = noise_source(self.node)
        if os.environ.get("XDP_TEST_HE_NO_DP_NOISE"):  # test-only: check HE arithmetic against plaintext
            logging.getLogger("xdp.node.he").warning("XDP_TEST_HE_NO_DP_NOISE is set: scores carry NO DP noise")
            sig = {"score": sig["score"] * 0, "count": sig["count"] * 0}
        score_noise = np.asarray(sample_discrete_gaussian_vector(sig["score"], cells, rng),
                                 dtype=np.float64) / 2**frac
        count_noise = np.asarray(sample_discrete_gaussian_vector(sig["count"], cells, rng), dtype=np.float64)
        flood = float(os.environ.get("XDP_HE_FLOOD_SIGMA", str(2.0**-8)))
        out = ckks.score_partial(request.context, request.weights, matrix,
                                 np.concatenate([score_noise, count_noise]), flood)
        return HeScoreReply(scores=out)
