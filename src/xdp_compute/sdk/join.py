"""Analyst side of a private join (issue #16): decrypt the released ciphertexts and finalize.

The answer of a join is one Paillier ciphertext per (B-cell, measurement) of its ``JoinPlan``,
whose slots are the A-cells (``query.plan.pack_slots``), each holding the cell's total plus both
holders' noise shares. Decryption gives the signed totals in the plan's cell order; the rest is
the single-dataset path: ``finalize_rows`` with the plan's noise (two shares) for the estimates
and their intervals, then small-cell suppression on the noisy COUNT(*).
"""

from __future__ import annotations

import base64
from typing import Any

from xdp_compute.crypto.paillier import PaillierPrivate, ciphertexts_from_bytes
from xdp_compute.errors import Conflict, WrongKey
from xdp_compute.privacy import NoisePlan
from xdp_compute.query.finalize import finalize_rows, suppress_small_groups
from xdp_compute.query.join_plan import JoinPlan, unpack_slots
from xdp_compute.sdk.results import QueryResult, query_result

MAX_RESULT_BYTES = 64 << 20


def reads_two_datasets(sql: str) -> bool:
    """Whether ``sql`` is a JOIN (then its answer is delivered encrypted); a query the parser refuses
    is not, and goes to the gateway as written, which answers the refusal."""
    from xdp_compute.errors import InvalidQuery
    from xdp_compute.query.parse import parse_statement

    try:
        return bool(parse_statement(sql, allow_join=True).args.get("joins"))
    except (InvalidQuery, TypeError):
        return False


def join_totals(private: PaillierPrivate, plan: JoinPlan, ciphertexts: list[int]) -> list[int]:
    """The signed noisy integer totals in ``plan.inner``'s cell x measurement order."""
    n_meas = len(plan.inner.measurements)
    if len(ciphertexts) != len(plan.b.cells) * n_meas:
        raise Conflict("the join answer holds the wrong number of ciphertexts for its plan")
    n = private.public.n
    slots = [unpack_slots(private.raw_decrypt(c), n, len(plan.a.cells), plan.slot_bits) for c in ciphertexts]
    totals = [0] * plan.inner.vector_length
    for cell, (g, h) in enumerate(plan.cell_pairs):
        for mi in range(n_meas):
            totals[plan.inner.index(cell, mi)] = slots[h * n_meas + mi][g]
    return totals


def decrypt_join(private: PaillierPrivate, delivery: dict[str, Any]) -> QueryResult:
    """Decrypt a released join answer into the same QueryResult as every other query."""
    res = delivery["result"]
    ct = res.get("ciphertexts")
    if not isinstance(ct, str):
        raise Conflict("this encrypted answer was already delivered; the gateway keeps only its digest")
    if res.get("key_fingerprint") != private.public.fingerprint:
        raise WrongKey("this answer was encrypted under another Paillier key (fingerprint mismatch); "
                       "load the key pair the query was sent with")
    plan = JoinPlan.from_dict(res["join_plan"])
    cts = ciphertexts_from_bytes(base64.b64decode(ct), private.public, max_bytes=MAX_RESULT_BYTES)
    totals = join_totals(private, plan, cts)
    noise = NoisePlan.from_dict(res["noise"])
    dataset = " JOIN ".join(res.get("datasets", []))
    payload = finalize_rows(plan.inner, noise, totals, int(res["n_shares"]), float(res["level"]),
                            plan.hidden_count, dataset)
    # The gateway never sees a join's counts: the holders' min_group_size is applied here, on the
    # released noisy COUNT(*) (a function of released values only).
    suppress_small_groups(plan.inner, payload, int(res["min_group_size"]), plan.hidden_count)
    payload["nodes"] = res.get("nodes", [])
    payload["datasets"] = res.get("datasets", [])
    plain = dict(delivery)
    plain["result"] = payload
    result = query_result(plain)
    result.delivery = delivery  # the receipt covers what the gateway released: the ciphertexts
    return result


__all__ = ["decrypt_join", "join_totals", "reads_two_datasets"]
