"""A deviating gateway and deviating holders in a private join (issue #16), in one process: the
real driver (``gateway.join``) and two real node task executors over the contract's encoding,
with one party changed to deviate.

* The gateway skips the indicator side's noise round (A's ``join_noise``): the answer still carries
  the value side's full noise share.
* The value side (B) omits its noise share: the answer still carries A's full share.
* The gateway sends a node a round message again, or out of order: refused by the node's step.
* A deviating indicator side seals points that are not group elements to B: refused by B.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from join_data import KEY_BITS, Wire, delivery, prepared, write_nodes

from xdp_compute.contract import Record
from xdp_compute.contract.tasks import JoinBegin, JoinCiphertexts, JoinDoubleBlind, JoinKeys, JoinSeed
from xdp_compute.crypto.paillier import generate_keypair
from xdp_compute.crypto.psi import InvalidPoint
from xdp_compute.errors import BadRequest
from xdp_compute.gateway.join import private_join
from xdp_compute.sdk.join import decrypt_join

SQL = ("SELECT h.district, SUM(i.claim) AS total FROM hospital h JOIN insurer i ON h.citizen = i.citizen "
       "GROUP BY h.district")


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return generate_keypair(KEY_BITS)


class SkipsNoise(Wire):
    """A gateway that never asks A for its noise share: it returns B's output as the answer."""

    async def ask(self, node: str, job_id: str, request: Record, timeout: float) -> Record:
        if request.KIND == "join_noise":
            return JoinCiphertexts(ciphertexts=request.ciphertexts)  # type: ignore[attr-defined]
        return await super().ask(node, job_id, request, timeout)


def _deviations(tmp_path: Path, keys: Any, wire_cls: type[Wire], quiet_b: bool) -> list[float]:
    public, private = keys
    pops, h, i = write_nodes(tmp_path, 11, 40, 40, 30, 60)
    p = prepared(SQL, h, i, public, 4.0)
    if quiet_b:  # the value side adds Enc(0) instead of its noise share
        i.join._noise_plaintexts = lambda job, m, cell: 0  # type: ignore[method-assign]
    try:
        cts = asyncio.run(private_join(wire_cls({"hospital-node": h, "insurer-node": i}), "job-1", p,  # type: ignore[arg-type]
                                       timeout=60))
    finally:
        h.close()
        i.close()
    result = decrypt_join(private, delivery(p, public, cts))
    truth = pops.truth()
    out = []
    for row, iv in zip(result.rows, result.intervals, strict=True):
        exact = sum(v["sum"] for (d, _), v in truth.items() if d == row["district"])
        half = (iv["total"][1] - iv["total"][0]) / 2
        out.append((row["total"] - exact) / half)
    return out


@pytest.mark.parametrize("wire_cls,quiet_b", [(SkipsNoise, False), (Wire, True)], ids=["gateway-skips-A", "B-silent"])
def test_the_answer_carries_one_full_noise_share_whichever_party_deviates(tmp_path: Path, keys: Any,
                                                                          wire_cls: type[Wire], quiet_b: bool) -> None:
    # Each cell's deviation from the exact join total, in half-widths of its 95% interval (which is
    # computed for both shares: one share alone has ~0.71 of that spread). No noise at all would give
    # exactly 0 (claims have two decimals; the noise's sigma is hundreds of units); one share stays
    # within 6 half-widths except with probability < 1e-9.
    devs = _deviations(tmp_path, keys, wire_cls, quiet_b)
    assert len(devs) == 2
    assert all(abs(d) > 1e-6 for d in devs), devs
    assert all(abs(d) < 6 for d in devs), devs


def test_a_round_message_sent_again_or_out_of_order_is_refused(tmp_path: Path, keys: Any) -> None:
    public, _ = keys
    _, h, i = write_nodes(tmp_path, 12, 10, 10, 5, 20)
    h.node_id, i.node_id = "hospital-node", "insurer-node"
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
        ka = h.join.keys("j", JoinKeys(plan=plan.to_dict(), side="A", peer="insurer-node", public_key=public.to_dict()))
        kb = i.join.keys("j", JoinKeys(plan=plan.to_dict(), side="B", peer="hospital-node", public_key=public.to_dict()))
        sa = h.join.seed("j", JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate))
        sb = i.join.seed("j", JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate))
        with pytest.raises(BadRequest, match="at step"):  # the seed round again: a second seed half
            i.join.seed("j", JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate))
        with pytest.raises(BadRequest, match="at step"):  # round 2 before round 1
            i.join.double_blind("j", JoinDoubleBlind(sealed=sa.sealed))
        ba = h.join.begin("j", JoinBegin(sealed=sb.sealed))
        i.join.begin("j", JoinBegin(sealed=sa.sealed))
        with pytest.raises(BadRequest, match="at step"):  # round 1 again: B would blind a second list
            i.join.begin("j", JoinBegin(sealed=sa.sealed))
        i.join.double_blind("j", JoinDoubleBlind(sealed=ba.sealed))
        with pytest.raises(BadRequest, match="at step"):  # A's points again: B's scalar is gone
            i.join.double_blind("j", JoinDoubleBlind(sealed=ba.sealed))
    finally:
        h.close()
        i.close()


@pytest.mark.parametrize("bad", [bytes(32), b"\x01" + bytes(31), b"\xff" * 32], ids=["identity", "order-1", "noncanon"])
def test_points_outside_the_group_from_a_deviating_holder_are_refused(tmp_path: Path, keys: Any, bad: bytes) -> None:
    public, _ = keys
    _, h, i = write_nodes(tmp_path, 13, 10, 10, 5, 20)
    h.node_id, i.node_id = "hospital-node", "insurer-node"
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
        ka = h.join.keys("j", JoinKeys(plan=plan.to_dict(), side="A", peer="insurer-node", public_key=public.to_dict()))
        kb = i.join.keys("j", JoinKeys(plan=plan.to_dict(), side="B", peer="hospital-node", public_key=public.to_dict()))
        sa = h.join.seed("j", JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate))
        sb = i.join.seed("j", JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate))
        honest = h.join.begin("j", JoinBegin(sealed=sb.sealed))
        i.join.begin("j", JoinBegin(sealed=sa.sealed))
        del honest
        # A (deviating) seals, through the authenticated channel, a list whose first point is not
        # in the prime-order group (blinding it would leak B's scalar modulo the cofactor).
        forged = h.join._seal("j", h.join._job("j", "begin"), b"blinded", bad + bytes(32 * (plan.a.max_rows - 1)))
        with pytest.raises(InvalidPoint):
            i.join.double_blind("j", JoinDoubleBlind(sealed=forged))
    finally:
        h.close()
        i.close()
