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


def install(executor: Any) -> None:
    executor.handlers["he_query_partial"] = lambda job_id, header, blobs: he_query_partial(
        executor, job_id, header, blobs)
