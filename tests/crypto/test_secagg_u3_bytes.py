"""A node recognises in Round 4 the U3 bytes it read in Round 3 instead of decoding n names again
(crypto/secagg/messages.py ``known_survivors``, client.py); any other set is still decoded and refused."""

from __future__ import annotations

import numpy as np
import pytest

from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    UnmaskRequest,
)
from xdp_compute.errors import ProtocolAborted


def _to_round_four(n: int = 6, drop: str | None = "node-5") -> tuple[SecAggConfig, SecAggServer,
                                                                       dict[str, SecAggClient], bytes]:
    parts = [f"node-{i}" for i in range(n)]
    cfg = SecAggConfig(session_id=b"u3-bytes", participants=parts, vector_length=4, threshold=3)
    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in parts}
    for u in parts:
        server.receive(u, clients[u].advertise_keys().encode())
    server.close_advertise_keys()
    for u in parts:
        server.receive(u, clients[u].share_keys(server.roster_for(u).encode()).encode())
    server.close_share_keys()
    for u in parts:
        if u != drop:
            x = np.full(4, parts.index(u), dtype=np.uint64)
            server.receive(u, clients[u].masked_input(x, server.shares_for(u).encode()).encode())
    check = server.close_masked_input().encode()
    for u in server.survivors(Phase.MASKED_INPUT):
        server.receive(u, clients[u].consistency_check(check).encode())  # bytes, as the node task passes them
    server.close_consistency()
    return cfg, server, clients, check


def test_round_four_from_bytes_completes_and_sums() -> None:
    _, server, clients, _ = _to_round_four()
    for u in server.survivors(Phase.CONSISTENCY):
        server.receive(u, clients[u].unmask(server.unmask_request_for(u).encode()).encode())
    assert server.close_unmask().tolist() == [0 + 1 + 2 + 3 + 4] * 4


def test_known_survivors_reuse_only_identical_bytes() -> None:
    cfg, server, _, check = _to_round_four()
    msg, known = ConsistencyCheck.decode_keeping_survivors(check)
    assert known[1] == msg.survivors == server.survivors(Phase.MASKED_INPUT)
    same = UnmaskRequest.decode(server.unmask_request().encode(), known_survivors=known)
    assert same.survivors is known[1]  # recognised, not decoded again
    other = UnmaskRequest(cfg.session_id, (*msg.survivors[:-1],), dict(same.signatures))
    decoded = UnmaskRequest.decode(other.encode(), known_survivors=known)
    assert decoded.survivors == msg.survivors[:-1] and decoded.survivors is not known[1]


def test_another_survivor_set_in_bytes_is_still_refused() -> None:
    cfg, server, clients, _ = _to_round_four()
    request = server.unmask_request_for("node-0")
    everyone = UnmaskRequest(cfg.session_id, cfg.participants, dict(request.signatures))  # adds dropped node-5
    with pytest.raises(ProtocolAborted, match="another survivor set"):
        clients["node-0"].unmask(everyone.encode())
    assert clients["node-0"].phase is Phase.ABORTED
