"""A whole secure-aggregation session in one process, every message through its wire form.

For tests, benchmarks and single-process demos; the gateway and nodes drive the same client and
server over gRPC instead (``xdp_compute.gateway.secure_sum``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.secagg.client import SecAggClient
from xdp_compute.crypto.secagg.config import Phase, SecAggConfig
from xdp_compute.crypto.secagg.identity import NodeSigner, PeerVerifier
from xdp_compute.crypto.secagg.messages import (
    ConsistencyCheck,
    EncryptedShares,
    KeyRoster,
    SecAggMessage,
    UnmaskRequest,
)
from xdp_compute.crypto.secagg.server import SecAggServer


def run_local_session(
    config: SecAggConfig,
    inputs: Mapping[str, U64Vector],
    *,
    drop: Mapping[str, Phase] | None = None,
    observe: Callable[[str, bytes], None] | None = None,
    signers: Mapping[str, NodeSigner] | None = None,
    verifier: PeerVerifier | None = None,
) -> U64Vector:
    """Run a whole session in one process, every message through ``encode``/``decode``.

    For tests, benchmarks and single-process demos. ``drop[u] = phase`` makes node u go silent
    from that phase on (ADVERTISE_KEYS: never shows up; UNMASK: signs the survivor set but
    does not answer the unmasking request). ``observe(node_id, bytes)`` sees every byte string the
    server receives. ``signers`` (by node) and ``verifier``: the authenticated protocol.
    Returns the server's result or raises ProtocolAborted.
    """
    drop = dict(drop or {})

    def active(u: str, phase: Phase) -> bool:
        return u not in drop or phase < drop[u]

    def send(server: SecAggServer, u: str, msg: SecAggMessage) -> None:
        raw = msg.encode()
        if observe is not None:
            observe(u, raw)
        server.receive(u, raw)

    server = SecAggServer(config)
    clients = {u: SecAggClient(u, config, signer=(signers or {}).get(u), verifier=verifier)
               for u in config.participants}
    for u, c in clients.items():
        if active(u, Phase.ADVERTISE_KEYS):
            send(server, u, c.advertise_keys())
    server.close_advertise_keys()
    for u in server.survivors(Phase.ADVERTISE_KEYS):
        if active(u, Phase.SHARE_KEYS):
            send(server, u, clients[u].share_keys(KeyRoster.decode(server.roster_for(u).encode())))
    server.close_share_keys()
    for u in server.survivors(Phase.SHARE_KEYS):
        if active(u, Phase.MASKED_INPUT):
            es = EncryptedShares.decode(server.shares_for(u).encode())
            send(server, u, clients[u].masked_input(inputs[u], es))
    check = ConsistencyCheck.decode(server.close_masked_input().encode())
    for u in server.survivors(Phase.MASKED_INPUT):
        if active(u, Phase.CONSISTENCY):
            send(server, u, clients[u].consistency_check(check))
    server.close_consistency()
    for u in server.survivors(Phase.CONSISTENCY):
        if active(u, Phase.UNMASK):
            send(server, u, clients[u].unmask(UnmaskRequest.decode(server.unmask_request_for(u).encode())))
    return server.close_unmask()
