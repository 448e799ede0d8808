"""The gateway-node contract: every kind round-trips, and anything off-contract is refused."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest

from xdp_compute.contract import (
    CONTRACT_VERSION,
    REPLY_OF,
    REQUESTS,
    ContractError,
    HeQueryBegin,
    HeQueryBegun,
    HeQueryMaskedInput,
    HeQueryMaskedReply,
    QueryBegin,
    QueryBegun,
    Record,
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
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
    parse_fraction,
)

SESSION = SecAggSession(session_id="job:sum", participants=["a", "b", "c"], vector_length=4, threshold=2)
SIGMAS = {"count": Fraction(7, 3), "sum_cost": Fraction(10**30, 7)}
REQUEST_EXAMPLES: list[Record] = [
    Validate(),
    QueryBegin(plan={"dataset": "p", "cells": []}, sigma_node2=SIGMAS, secagg=SESSION),
    TrainBegin(round=3, epsilon_reserved=0.25, params=b"\x00" * 16, secagg=SESSION),
    SecAggShareKeys(session_id="job:sum", secagg=b"roster"),
    SecAggMaskedInput(session_id="job:sum", secagg=b"shares"),
    SecAggConsistency(session_id="job:sum", secagg=b"survivors"),
    SecAggUnmask(session_id="job:sum", secagg=b"request"),
    HeQueryBegin(plan={"dataset": "p"}, sigma_node2=SIGMAS, public_key={"n": "35"}, scheme={"slots": 2},
                 secagg=SESSION),
    HeQueryMaskedInput(session_id="job:sealed", secagg=b"shares"),
    TrainPrepare(spec={"dataset": "p"}, n_features=3, n_classes=2, delta=1e-8, where_plan=None),
    TrainEval(params=b"\x01" * 8),
]
REPLY_EXAMPLES: dict[str, Record] = {
    "validate": Validated(datasets=[{"dataset": "p", "ok": True}], ok=True),
    "query_begin": QueryBegun(secagg=b"keys"),
    "train_begin": TrainRoundBegun(secagg=b"keys", epsilon=1.5, epsilon_round=0.5, steps=12, next_cost=0.4,
                                   metrics={"count": 10.0}),
    "secagg_share_keys": SecAggMessage(secagg=b"x"),
    "secagg_masked_input": SecAggMessage(secagg=b"y"),
    "secagg_consistency": SecAggMessage(secagg=b"signature"),
    "secagg_unmask": SecAggMessage(secagg=b"z"),
    "he_query_begin": HeQueryBegun(secagg=b"keys"),
    "he_query_masked_input": HeQueryMaskedReply(secagg=b"counts", ciphertext=b"c"),
    "train_prepare": TrainPrepared(next_cost=None, delta=1e-8, rounds_planned=10),
    "train_eval": TrainEvaluated(metrics={}, epsilon=2.0),
}

# Hidden lookups (issue #17).
from xdp_compute.contract.tasks import (  # noqa: E402
    LookupEvaluate,
    LookupEvaluated,
    LookupPrepare,
    LookupPrepared,
    LookupTablePart,
    LookupTablePartReply,
)

_V = "0123456789abcdef" * 2
REQUEST_EXAMPLES += [
    LookupPrepare(dataset="p", product="prod", columns=["score"]),
    LookupTablePart(dataset="p", product="prod", version=_V, part=0),
    LookupEvaluate(dataset="p", product="prod", version=_V, point=b"\x02" * 32, principal="ana"),
]
REPLY_EXAMPLES.update({
    "lookup_prepare": LookupPrepared(version=_V, key_type="text", columns=["score"], capacity=10, label_bytes=64,
                                     table_bytes=1000, parts=1),
    "lookup_table_part": LookupTablePartReply(version=_V, data=b"table"),
    "lookup_evaluate": LookupEvaluated(version=_V, point=b"\x03" * 32, proof=b"\x04" * 64),
})

# private joins (issue #16)
from xdp_compute.contract.tasks import (  # noqa: E402
    JoinAggregate,
    JoinBegin,
    JoinCiphertexts,
    JoinDoubleBlind,
    JoinKeys,
    JoinKeysReply,
    JoinNoise,
    JoinSealed,
    JoinSeed,
    JoinTags,
    JoinUnpermute,
)

REQUEST_EXAMPLES += [
    JoinKeys(plan={"sql": "x"}, side="A", peer="n2", public_key={"n": "35"}, principal="ana"),
    JoinSeed(peer_key=b"k" * 32, peer_signature=b"s", peer_certificate=b"c"),
    JoinBegin(sealed=b"sealed"), JoinDoubleBlind(sealed=b"sealed"), JoinUnpermute(ciphertexts=b"c"),
    JoinAggregate(sealed=b"sealed"), JoinNoise(ciphertexts=b"c"),
]
REPLY_EXAMPLES.update({
    "join_keys": JoinKeysReply(key=b"k" * 32, signature=b"", certificate=b""),
    "join_seed": JoinSealed(sealed=b"s"), "join_begin": JoinSealed(sealed=b"s"),
    "join_double_blind": JoinTags(tags=b"t" * 16, ciphertexts=b""), "join_unpermute": JoinSealed(sealed=b"s"),
    "join_aggregate": JoinCiphertexts(ciphertexts=b"c"), "join_noise": JoinCiphertexts(ciphertexts=b"c"),
})

# data exchange (issue #17): content commitments
from xdp_compute.contract.tasks import Commit, Committed

REQUEST_EXAMPLES += [Commit(dataset="visits")]
REPLY_EXAMPLES.update({"commit": Committed(commitment="ab" * 32, scheme="hmac-sha256/v1")})


def wire(record: Record) -> tuple[dict[str, Any], dict[str, bytes]]:
    header, blobs = encode(record)
    return json.loads(json.dumps(header)), blobs  # exactly what crosses the proto envelope


def test_every_kind_has_an_example_and_a_reply() -> None:
    assert {r.KIND for r in REQUEST_EXAMPLES} == set(REQUESTS) == set(REPLY_OF) == set(REPLY_EXAMPLES)


@pytest.mark.parametrize("request_", REQUEST_EXAMPLES, ids=lambda r: r.KIND)
def test_requests_round_trip_through_json_and_blobs(request_: Record) -> None:
    header, blobs = wire(request_)
    assert header["v"] == CONTRACT_VERSION
    assert not set(blobs) & set(header)
    assert decode_request(request_.KIND, header, blobs) == request_


@pytest.mark.parametrize("kind", sorted(REPLY_EXAMPLES))
def test_replies_round_trip(kind: str) -> None:
    header, blobs = wire(REPLY_EXAMPLES[kind])
    assert decode_reply(kind, header, blobs) == REPLY_EXAMPLES[kind]


def test_noise_variances_travel_exactly() -> None:
    header, _ = wire(REQUEST_EXAMPLES[1])
    assert header["sigma_node2"] == {"count": "7/3", "sum_cost": f"{10**30}/7"}
    assert decode_request("query_begin", header).sigma_node2 == SIGMAS


def _train_begin() -> tuple[dict[str, Any], dict[str, bytes]]:
    return wire(REQUEST_EXAMPLES[2])


@pytest.mark.parametrize(("change", "words"), [
    (lambda h, b: ({**h, "round": True}, b), "round"),
    (lambda h, b: ({**h, "round": 1.0}, b), "round"),
    (lambda h, b: ({**h, "epsilon_reserved": "0.25"}, b), "epsilon_reserved"),
    (lambda h, b: ({**h, "epsilon_reserved": float("nan")}, b), "finite"),
    (lambda h, b: ({**h, "epsilon_reserved": -1.0}, b), "epsilon_reserved"),
    (lambda h, b: ({**h, "surprise": 1}, b), "surprise"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "v"}, b), "version"),
    (lambda h, b: ({**h, "v": CONTRACT_VERSION + 1}, b), "version"),
    (lambda h, b: (h, {}), "params"),
    (lambda h, b: (h, {**b, "extra": b""}), "extra"),
    (lambda h, b: ({**h, "params": "AAAA"}, {}), "blob"),
    (lambda h, b: ({**h, "secagg": {**h["secagg"], "threshold": "2"}}, b), "threshold"),
    (lambda h, b: ([1, 2], b), "object"),
])
def test_off_contract_requests_are_refused_naming_the_problem(change: Any, words: str) -> None:
    header, blobs = change(*_train_begin())
    with pytest.raises(ContractError) as e:
        decode_request("train_begin", header, blobs)
    assert words in e.value.detail and e.value.status == 400


def test_unknown_kind_and_bad_fractions_are_refused() -> None:
    with pytest.raises(ContractError, match="unknown task kind"):
        decode_request("run_python", {"v": CONTRACT_VERSION})
    with pytest.raises(ContractError, match="no reply"):
        decode_reply("run_python", {"v": CONTRACT_VERSION})
    header, blobs = wire(REQUEST_EXAMPLES[1])
    for bad in (0.5, "1/0", "1/-2", "-1/2", "x/3", 3):
        with pytest.raises(ContractError, match="sigma_node2"):
            decode_request("query_begin", {**header, "sigma_node2": {"count": bad}}, blobs)
    assert parse_fraction("5") == Fraction(5)
