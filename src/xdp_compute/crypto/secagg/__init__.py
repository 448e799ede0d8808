"""Secure aggregation of uint64 vectors: Bonawitz et al., CCS 2017, with optional SecAgg+ graph.

"Practical Secure Aggregation for Privacy-Preserving Machine Learning" (Bonawitz, Ivanov,
Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth; CCS 2017), Fig. 4, the variant secure
against an active server: Round 0 (AdvertiseKeys, keys signed with each node's certified
identity), Round 1 (ShareKeys), Round 2 (MaskedInputCollection), Round 3 (ConsistencyCheck: each
survivor signs the survivor set it was told) and Round 4 (Unmasking, only once t signatures over
that same set verify). Nodes without identities (plaintext on loopback) run the same rounds with
empty signatures: the honest-but-curious protocol.

The server learns sum_{u in U3} x_u mod 2^64 and nothing else about any single x_u, as long as
fewer than ``threshold`` share holders of a node collude with it and the clients' rules below
are followed; it tolerates drop-outs at every phase while at least ``threshold`` remain (for the
exact SecAgg+ condition see :class:`SecAggConfig`).

Everything here is a pure state machine: no transport, no clock. Messages are dataclasses with
``encode() -> bytes`` and ``decode(bytes)``; the caller moves the bytes (gRPC in xdp-compute),
tells the server which authenticated node sent each one, and decides when a round is over
(``SecAggServer.close_*``): whatever arrived by then is the round's survivor set.

Sets, in the paper's notation: U1 advertised keys, U2 sent encrypted shares, U3 sent a masked
input (their inputs are summed), U4 signed U3, U5 answered the unmasking request.

Modules: ``config`` (limits, phases, errors, :class:`SecAggConfig` and the neighbour graph),
``identity`` (node signatures against the deployment CA), ``keys`` (key agreement and HKDF derivations), ``codec`` (wire framing), ``messages``,
``client``, ``server`` and ``simulation`` (:func:`run_local_session`).
"""

from xdp_compute.crypto.secagg.client import SecAggClient
from xdp_compute.crypto.secagg.config import (
    MAX_NODE_ID_BYTES,
    MAX_PARTICIPANTS,
    MAX_SESSION_ID_BYTES,
    MAX_VECTOR_LENGTH,
    MalformedMessage,
    Phase,
    RoundConflict,
    SecAggConfig,
    SecAggParameters,
    SecAggUnconfigurable,
    complete_graph_parameters,
    default_neighbours,
    default_threshold,
    secagg_plus_parameters,
)
from xdp_compute.crypto.secagg.identity import NodeSigner, PeerVerifier
from xdp_compute.crypto.secagg.keys import SHARE_CIPHERTEXT_BYTES
from xdp_compute.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    NodeKeys,
    SecAggMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from xdp_compute.crypto.secagg.server import SecAggServer
from xdp_compute.crypto.secagg.simulation import run_local_session

__all__ = [
    "MAX_NODE_ID_BYTES",
    "MAX_PARTICIPANTS",
    "MAX_SESSION_ID_BYTES",
    "MAX_VECTOR_LENGTH",
    "SHARE_CIPHERTEXT_BYTES",
    "AdvertiseKeys",
    "ConsistencyCheck",
    "ConsistencySignature",
    "EncryptedShares",
    "KeyRoster",
    "MalformedMessage",
    "MaskedInput",
    "NodeKeys",
    "NodeSigner",
    "PeerVerifier",
    "Phase",
    "RoundConflict",
    "SecAggClient",
    "SecAggConfig",
    "SecAggMessage",
    "SecAggParameters",
    "SecAggServer",
    "SecAggUnconfigurable",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "complete_graph_parameters",
    "decode_message",
    "default_neighbours",
    "default_threshold",
    "run_local_session",
    "secagg_plus_parameters",
]
