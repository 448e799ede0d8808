"""HE tasks on the node: Paillier encrypted partials.

The HE libraries are the optional ``he`` extra: they are imported when an HE task arrives, so a
node without them still answers every other task (and refuses these with a clear message).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from xdp_compute.contract import HeQueryPartial, HeQueryReply
from xdp_compute.errors import BadRequest
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.query import local_noisy_vector
from xdp_compute.query.plan import from_ring

if TYPE_CHECKING:
    from xdp_compute.crypto.paillier import ObfuscatorPool, PaillierPublic

MAX_KEYS_CACHED = 8


def _he_module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"xdp_compute.crypto.{name}")
    except ImportError:
        raise BadRequest("this node has no HE support installed (pip install 'xdp-compute[he]')") from None


class HeTasks:
    """``he_query_partial``; keeps one obfuscator pool per analyst key.

    There is no CKKS scoring task: a secret-weights score cannot be made DP against a malicious
    analyst (its sensitivity depends on weights nobody but the analyst sees), so scoring releases
    DP feature sums through the plain query path and the SDK applies the weights (issue #11).
    """

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
