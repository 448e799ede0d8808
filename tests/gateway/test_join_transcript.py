"""The transcript test of a private join (issue #16): everything the gateway receives and everything
each node receives, recorded at the driver's task channel (``Wire``), holds no raw key and no raw
value; and a holder's view has the same shape and sizes whether a given row of it matched or not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from join_data import KEY_BITS, Wire, prepared, write_nodes

from xdp_compute.crypto.paillier import generate_keypair
from xdp_compute.gateway.join import private_join

SQL = ("SELECT h.district, i.tier, COUNT(*) AS n, SUM(i.claim) AS total FROM hospital h JOIN insurer i "
       "ON h.citizen = i.citizen WHERE h.age > 10 GROUP BY h.district, i.tier")


@pytest.fixture(scope="module")
def keys() -> Any:
    return generate_keypair(KEY_BITS)


def run(root: Path, public: Any, edit: Any = None) -> tuple[Wire, Any]:
    pops, h, i = write_nodes(root, 5, 30, 25, 12, 40)
    if edit is not None:
        edit(root, pops)
        h.close()
        i.close()
        from xdp_compute.domain.manifest import load_manifest
        from xdp_compute.node.executors import TaskExecutor

        h = TaskExecutor(load_manifest(root / "h" / "node.toml"))
        i = TaskExecutor(load_manifest(root / "i" / "node.toml"))
    wire = Wire({"hospital-node": h, "insurer-node": i})
    try:
        asyncio.run(private_join(wire, "job-t", prepared(SQL, h, i, public, 8.0), timeout=60))  # type: ignore[arg-type]
    finally:
        h.close()
        i.close()
    return wire, pops


def everything(wire: Wire) -> bytes:
    out = b""
    for records in (*wire.to_node.values(), wire.to_gateway):
        for kind, header, blobs in records:
            out += kind.encode() + json.dumps(header).encode() + b"".join(blobs.values())
    return out


def test_nothing_any_party_receives_holds_a_raw_key_or_value(tmp_path: Path, keys: Any) -> None:
    public, _ = keys
    wire, pops = run(tmp_path, public)
    seen = everything(wire)
    assert len(wire.to_gateway) == 11 and sum(len(v) for v in wire.to_node.values()) == 11
    for k in pops.raw_keys:
        for form in (k.encode(), k.encode("utf-16-le"), k.lower().encode()):
            assert form not in seen, k
    for v in pops.raw_values:
        if "." in v:  # claims; ages are small numbers that occur anywhere by chance
            assert v.encode() not in seen, v
            assert repr(float(v)).encode() not in seen, v


def view(wire: Wire, node: str) -> list[tuple[str, str, dict[str, int]]]:
    """What a node received: each task's kind, its header (minus nothing), and its blobs' sizes."""
    return [(kind, json.dumps(header, sort_keys=True), {k: len(b) for k, b in blobs.items()})
            for kind, header, blobs in wire.to_node[node]]


def test_a_holders_view_is_the_same_whether_its_row_matched_or_not(tmp_path: Path, keys: Any) -> None:
    public, _ = keys

    def unmatch(root: Path, pops: Any) -> None:
        # The insurer's copy of one shared key becomes a key the hospital does not hold: one row of
        # each holder stops matching; everything else is the same file.
        text = (root / "i" / "insurer.csv").read_text()
        shared = min(set(pops.hospital) & set(pops.insurer))
        assert text.count(shared) == 1
        (root / "i" / "insurer.csv").write_text(text.replace(shared, "Z" + shared[1:]))

    matched, _ = run(tmp_path / "matched", public)
    unmatched, _ = run(tmp_path / "unmatched", public, unmatch)
    for node in ("hospital-node", "insurer-node"):
        assert view(matched, node) == view(unmatched, node), node
    # The gateway's view differs only in the contents of tags and ciphertexts: same sizes too.
    assert [(k, {n: len(b) for n, b in bl.items()}) for k, _, bl in matched.to_gateway] == \
        [(k, {n: len(b) for n, b in bl.items()}) for k, _, bl in unmatched.to_gateway]
