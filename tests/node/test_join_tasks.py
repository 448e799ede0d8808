"""A holder's own checks in a private join (issue #16, node/tasks/join.py): it refuses a plan that
shrinks its dummies or misdescribes its key or size, and a sealed message the gateway altered;
both holders draw the same dummy count from their joint seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from join_data import KEY_BITS, prepared, write_nodes

from xdp_compute.contract.tasks import JoinBegin, JoinKeys, JoinSeed
from xdp_compute.crypto.paillier import generate_keypair
from xdp_compute.errors import BadRequest
from xdp_compute.node.tasks.join import check_join_side, dummy_count, dummy_tags

SQL = "SELECT i.tier, SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY i.tier"


@pytest.fixture(scope="module")
def public() -> Any:
    return generate_keypair(KEY_BITS)[0]


def test_a_node_refuses_fewer_dummies_another_domain_or_another_size(tmp_path: Path, public: Any) -> None:
    _, h, i = write_nodes(tmp_path, 4, 10, 10, 5, 20)
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
        ds = i.manifest.datasets[0]
        check_join_side(ds, plan, plan.b, is_b=True)  # the honest plan passes
        with pytest.raises(BadRequest, match="dummies are fewer"):
            check_join_side(ds, dataclasses.replace(plan, dummy_shift=plan.dummy_shift - 1), plan.b, is_b=True)
        with pytest.raises(BadRequest, match="join key here"):
            check_join_side(ds, plan, dataclasses.replace(plan.b, join_domain="phone"), is_b=True)
        with pytest.raises(BadRequest, match="declares max_rows"):
            check_join_side(ds, plan, dataclasses.replace(plan.b, max_rows=5), is_b=True)
    finally:
        h.close()
        i.close()


def test_a_sealed_message_altered_on_the_way_is_refused(tmp_path: Path, public: Any) -> None:
    _, h, i = write_nodes(tmp_path, 5, 10, 10, 5, 20)
    h.node_id, i.node_id = "hospital-node", "insurer-node"
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
        ka = h.join.keys("j", JoinKeys(plan=plan.to_dict(), side="A", peer="insurer-node",
                                       public_key=public.to_dict()))
        kb = i.join.keys("j", JoinKeys(plan=plan.to_dict(), side="B", peer="hospital-node",
                                       public_key=public.to_dict()))
        i.join.seed("j", JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate))
        h.join.seed("j", JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate))
        sb = i.join._job("j", "seed")  # B's sealed seed half, as the gateway would forward it
        sealed = i.join._seal("j", sb, b"seed", b"\x00" * 32)
        flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
        with pytest.raises(BadRequest, match="did not open"):
            h.join.begin("j", JoinBegin(sealed=flipped))
        # A message B sealed for another round does not pass as this one either.
        with pytest.raises(BadRequest, match="another job, side or round"):
            h.join.begin("j", JoinBegin(sealed=i.join._seal("j", sb, b"blinded", b"\x00" * 32)))
    finally:
        h.close()
        i.close()


def test_both_holders_draw_the_same_dummies_from_the_joint_seed(tmp_path: Path, public: Any) -> None:
    _, h, i = write_nodes(tmp_path, 6, 10, 10, 5, 20)
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
    finally:
        h.close()
        i.close()
    counts = [dummy_count(plan, bytes([k]) * 32) for k in range(40)]
    assert all(0 <= d <= plan.dummy_max for d in counts) and len(set(counts)) > 5  # random, clipped
    assert dummy_count(plan, b"s" * 32) == dummy_count(plan, b"s" * 32)
    assert dummy_tags(b"s" * 32, 3) == dummy_tags(b"s" * 32, 3) != dummy_tags(b"t" * 32, 3)
