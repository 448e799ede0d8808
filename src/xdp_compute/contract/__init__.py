"""The gateway–node contract: every task kind, its request and its reply, as typed records.

One vocabulary for both sides (as Flower's ``secaggplus_constants`` is for its client mod and
server workflow): the gateway builds requests and reads replies with these records, the node
reads requests and builds replies with the same ones. The proto stays an envelope (``kind``,
``header_json``, ``blobs``); this module is its schema. See ``tasks`` for the records and the
wire rules.
"""

from __future__ import annotations

from xdp_compute.contract.tasks import (
    CONTRACT_VERSION,
    REPLY_OF,
    REQUESTS,
    ContractError,
    HeQueryBegin,
    HeQueryBegun,
    HeQueryMaskedInput,
    HeQueryMaskedReply,
    NoiseBasis,
    QueryBegin,
    QueryBegun,
    Record,
    SecAggMaskedInput,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
    SecAggStep,
    SecAggUnmask,
    TrainBegin,
    TrainEval,
    TrainEvaluated,
    TrainPrepare,
    TrainPrepared,
    TrainRoundBegun,
    Validate,
    Validated,
    decode_reply,
    decode_request,
    encode,
    fraction_text,
    parse_fraction,
)

__all__ = [
    "CONTRACT_VERSION",
    "REPLY_OF",
    "REQUESTS",
    "ContractError",
    "HeQueryBegin",
    "HeQueryBegun",
    "HeQueryMaskedInput",
    "HeQueryMaskedReply",
    "NoiseBasis",
    "QueryBegin",
    "QueryBegun",
    "Record",
    "SecAggMaskedInput",
    "SecAggMessage",
    "SecAggSession",
    "SecAggShareKeys",
    "SecAggStep",
    "SecAggUnmask",
    "TrainBegin",
    "TrainEval",
    "TrainEvaluated",
    "TrainPrepare",
    "TrainPrepared",
    "TrainRoundBegun",
    "Validate",
    "Validated",
    "decode_reply",
    "decode_request",
    "encode",
    "fraction_text",
    "parse_fraction",
]
