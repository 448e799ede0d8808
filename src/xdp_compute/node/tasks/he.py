"""HE tasks on the node: Paillier encrypted delivery of secure-aggregation masked partials.

The HE libraries are the optional ``he`` extra: they are imported when an HE task arrives, so a
node without them still answers every other task (and refuses these with a clear message).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from xdp_compute.contract import HeQueryBegin, HeQueryBegun, HeQueryMaskedInput, HeQueryMaskedReply
from xdp_compute.errors import BadRequest
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.query import QueryTasks, declared_parties
from xdp_compute.node.tasks.secagg import SecAggSessions
from xdp_compute.query.sealed import revealed_slots

if TYPE_CHECKING:
    from xdp_compute.crypto.paillier import ObfuscatorPool, PackingScheme, PaillierPublic

MAX_KEYS_CACHED = 8
MAX_SEALED_SESSIONS = 64  # open encrypted-delivery sessions whose key this node remembers


def _he_module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"xdp_compute.crypto.{name}")
    except ImportError:
        raise BadRequest("this node has no HE support installed (pip install 'xdp-compute[he]')") from None


class HeTasks:
    """``he_query_begin`` and ``he_query_masked_input``; keeps one obfuscator pool per analyst key.

    A node never sends its noisy partial encrypted alone: that ciphertext, forwarded by the
    gateway, would decrypt to a partial carrying 1/t of the noise (issue #11). It sends it masked
    by secure aggregation, so only the survivors' full sum can be unmasked.

    There is no CKKS scoring task: a secret-weights score cannot be made DP against a malicious
    analyst (its sensitivity depends on weights nobody but the analyst sees), so scoring releases
    DP feature sums through the plain query path and the SDK applies the weights (issue #11).
    """

    def __init__(self, node: NodeContext, sessions: SecAggSessions, queries: QueryTasks) -> None:
        """``queries``: the plain query's tasks, whose data steps this query's run on too."""
        self.node, self.sessions, self.queries = node, sessions, queries
        self._sealed: dict[tuple[str, str], tuple[PaillierPublic, PackingScheme, ObfuscatorPool]] = {}
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

    def query_begin(self, job_id: str, request: HeQueryBegin) -> HeQueryBegun:
        """Round 0 of an encrypted-delivery query: the noisy vector (same plan and noise share as
        the plain path) goes into a *sealed* secure-aggregation session; keys are advertised.

        The node alone decides what it reveals in the clear: the plan's COUNT(*) slots
        (``query.sealed``). Everything else leaves only masked and encrypted (Round 2).

        As on the plain path (issue #13), the keys go back once the checks and the charge are
        done; the rows are read and the noise drawn during Round 1, and Round 2 waits for them
        (a failed data step fails Round 2, which the gateway counts as a refusal).
        """
        paillier = _he_module("paillier")
        try:
            public = paillier.PaillierPublic.from_dict(request.public_key)
            scheme = paillier.PackingScheme.from_dict(request.scheme)
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"bad encryption parameters: {type(e).__name__}") from None
        config = self.sessions.config_for(self.node.node_id, request.secagg)
        paillier.check_ring_scheme(public, scheme, config.n)
        plan, vec = self.queries.admit_and_start(job_id, "he_query", request, config.vector_length)
        try:
            pool = self.obfuscator_pool(public)  # starts precomputing r^n for Round 2 now
            msg = self.sessions.start(job_id, self.node.node_id, config, vec, revealed=revealed_slots(plan),
                                      parties=declared_parties(request))
        except BaseException:
            vec.cancel()
            raise
        with self._pools_lock:
            while len(self._sealed) >= MAX_SEALED_SESSIONS:
                self._sealed.pop(next(iter(self._sealed)))
            self._sealed[(job_id, request.secagg.session_id)] = (public, scheme, pool)
        return HeQueryBegun(secagg=msg)

    def masked_input(self, job_id: str, request: HeQueryMaskedInput) -> HeQueryMaskedReply:
        """Round 2 of a sealed session: y_u = x_u + masks (Bonawitz et al. 2017, Round 2),
        encrypted whole under the analyst's key, and in the clear at the revealed slots only.

        Each word of y_u is uniform on its own (the self mask PRG(b_u) alone makes it so), so
        this ciphertext, decrypted by itself, is uniform noise to the analyst; only the product
        over the survivors, with the masks' total removed, decrypts to their sum.
        """
        paillier = _he_module("paillier")
        with self._pools_lock:
            sealed = self._sealed.pop((job_id, request.session_id), None)
        if sealed is None:
            raise BadRequest(f"no sealed secure-aggregation session {request.session_id!r} for job {job_id} "
                             "on this node")
        public, scheme, pool = sealed
        shown, masked = self.sessions.sealed_masked_input(job_id, request)
        enc = paillier.encrypt_masked(public, masked, scheme, pool=pool)
        masked.fill(0)  # the caller's copy of y_u is not kept either
        return HeQueryMaskedReply(secagg=shown, ciphertext=enc.to_bytes(public))
