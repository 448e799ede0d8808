"""Wire encoding of secure-aggregation messages: round trips, and garbage never crashes."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from xdp_compute.crypto import secagg
from xdp_compute.crypto.secagg import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MalformedMessage,
    MaskedInput,
    NodeKeys,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from xdp_compute.crypto.shamir import LANES, PRIME, Share
from xdp_compute.errors import BadRequest, XdpError

SID = b"job-7/round-3"
K1, K2 = bytes(range(32)), bytes(range(32, 64))
CT = bytes(range(secagg.SHARE_CIPHERTEXT_BYTES))
# Stand-ins for a DER certificate and an ECDSA signature: the codec carries them as opaque blobs.
CERT = bytes(range(256)) * 3
SIG, SIG2 = b"\x30\x45" + bytes(range(69)), b"\x30\x44" + bytes(range(68, 0, -1))


def _samples() -> list[secagg.SecAggMessage]:
    return [
        AdvertiseKeys(SID, "node-é", K1, K2),
        AdvertiseKeys(SID, "node-é", K1, K2, CERT, SIG),
        KeyRoster(SID, {"a": NodeKeys(K1, K2), "b": NodeKeys(K2, K1)}),
        KeyRoster(SID, {"a": NodeKeys(K1, K2, CERT, SIG), "b": NodeKeys(K2, K1, CERT[::-1], SIG2)}),
        ShareKeys(SID, "a", {"b": CT, "c": CT[::-1]}),
        EncryptedShares(SID, "b", {"a": CT}),
        MaskedInput(SID, "a", np.array([0, 1, 2**64 - 1, 2**63], dtype=np.uint64)),
        ConsistencyCheck(SID, ("c", "a", "b")),
        ConsistencySignature(SID, "a", SIG),
        ConsistencySignature(SID, "a", b""),
        UnmaskRequest(SID, ("c", "a", "b")),
        UnmaskRequest(SID, ("c", "a", "b"), {"a": SIG, "c": SIG2}),
        UnmaskRequest(SID, ("c", "a", "b"), {"a": b"", "b": b"", "c": b""}),
        UnmaskResponse(SID, "a", {"a": Share.of(1, [5] * LANES), "b": Share.of(1, [PRIME - 1] * LANES)}, {"c": Share.of(1, [0] * LANES)}),
    ]


def _id(msg: secagg.SecAggMessage) -> str:
    if isinstance(msg, KeyRoster):
        signed = any(k.signature for k in msg.keys.values())
    elif isinstance(msg, UnmaskRequest):
        signed = any(msg.signatures.values())
    else:
        signed = bool(getattr(msg, "signature", b""))
    return type(msg).__name__ + ("-signed" if signed else "")


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in _samples()} == set(secagg.messages._BY_TYPE.values())
    assert len(secagg.messages._BY_TYPE) == 9
    assert {ConsistencyCheck.TYPE, ConsistencySignature.TYPE} == {8, 9}


def _same(a: secagg.SecAggMessage, b: secagg.SecAggMessage) -> bool:
    if isinstance(a, MaskedInput):
        assert isinstance(b, MaskedInput)
        return (a.session_id, a.sender) == (b.session_id, b.sender) and np.array_equal(a.vector, b.vector)
    return a == b


@pytest.mark.parametrize("msg", _samples(), ids=_id)
def test_roundtrip(msg: secagg.SecAggMessage) -> None:
    raw = msg.encode()
    assert isinstance(raw, bytes)
    back = type(msg).decode(raw)
    assert _same(back, msg)
    assert _same(decode_message(raw), msg)
    assert decode_message(bytearray(raw)) is not None


def test_vector_is_raw_little_endian_uint64() -> None:
    v = np.array([1, 2**64 - 2], dtype=np.uint64)
    raw = MaskedInput(SID, "a", v).encode()
    assert raw.endswith(struct.pack("<QQ", 1, 2**64 - 2))
    assert len(raw) == 5 + 2 + len(SID) + 2 + 1 + 4 + 16


@pytest.mark.parametrize("msg", _samples(), ids=_id)
def test_every_truncation_is_rejected(msg: secagg.SecAggMessage) -> None:
    raw = msg.encode()
    for cut in range(len(raw)):
        with pytest.raises(MalformedMessage):
            type(msg).decode(raw[:cut])
        with pytest.raises(MalformedMessage):
            decode_message(raw[:cut])


@pytest.mark.parametrize("msg", _samples(), ids=_id)
def test_trailing_bytes_and_wrong_type_rejected(msg: secagg.SecAggMessage) -> None:
    raw = msg.encode()
    with pytest.raises(MalformedMessage):
        type(msg).decode(raw + b"\x00")
    other = AdvertiseKeys if not isinstance(msg, AdvertiseKeys) else KeyRoster
    with pytest.raises(MalformedMessage):
        other.decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"XSA",
        b"XSA\x02\x01",  # unknown version
        b"XSA\x01\x63",  # unknown type
        b"NOPE" * 10,
        b"XSA\x01\x01\x00\x00",  # empty session id
    ],
)
def test_garbage_headers(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(raw)


@pytest.mark.parametrize("obj", [None, "XSA", 42, ["x"]])
def test_non_bytes_rejected(obj: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(obj)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage):
        AdvertiseKeys.decode(obj)  # type: ignore[arg-type]


def _header(msg_type: int) -> bytes:
    return b"XSA\x01" + bytes([msg_type]) + struct.pack(">H", len(SID)) + SID


def test_oversized_vector_claim_rejected_without_allocating() -> None:
    raw = (
        _header(MaskedInput.TYPE)
        + struct.pack(">H", 1)
        + b"a"
        + struct.pack(">I", secagg.MAX_VECTOR_LENGTH + 1)
    )
    with pytest.raises(MalformedMessage, match="exceeds"):
        MaskedInput.decode(raw)
    raw = _header(MaskedInput.TYPE) + struct.pack(">H", 1) + b"a" + struct.pack(">I", 10) + bytes(79)
    with pytest.raises(MalformedMessage, match="truncated"):
        MaskedInput.decode(raw)


def test_implausible_counts_rejected() -> None:
    raw = _header(KeyRoster.TYPE) + struct.pack(">I", 2**32 - 1)
    with pytest.raises(MalformedMessage, match="implausible"):
        KeyRoster.decode(raw)
    raw = _header(UnmaskRequest.TYPE) + struct.pack(">I", 5) + struct.pack(">H", 1) + b"a"
    with pytest.raises(MalformedMessage):
        UnmaskRequest.decode(raw)
    raw = _header(ConsistencyCheck.TYPE) + struct.pack(">I", 5) + struct.pack(">H", 1) + b"a"
    with pytest.raises(MalformedMessage, match="implausible"):
        ConsistencyCheck.decode(raw)
    # One survivor, then a signature count the rest of the message cannot hold.
    raw = (_header(UnmaskRequest.TYPE) + struct.pack(">I", 1) + struct.pack(">H", 1) + b"a"
           + struct.pack(">I", 2) + struct.pack(">H", 1) + b"a" + struct.pack(">H", 0))
    with pytest.raises(MalformedMessage, match="implausible signature count"):
        UnmaskRequest.decode(raw)


def test_bad_fields_rejected() -> None:
    no_attestation = struct.pack(">HH", 0, 0)  # empty certificate, empty signature
    assert AdvertiseKeys.decode(_header(1) + struct.pack(">H", 1) + b"a" + K1 + K2 + no_attestation) == (
        AdvertiseKeys(SID, "a", K1, K2))
    with pytest.raises(MalformedMessage, match="UTF-8"):
        AdvertiseKeys.decode(_header(1) + struct.pack(">H", 2) + b"\xff\xfe" + K1 + K2 + no_attestation)
    with pytest.raises(MalformedMessage, match="longer"):
        AdvertiseKeys.decode(_header(1) + struct.pack(">H", 300) + b"a" * 300 + K1 + K2 + no_attestation)
    with pytest.raises(MalformedMessage, match="empty"):
        AdvertiseKeys.decode(_header(1) + struct.pack(">H", 0) + K1 + K2 + no_attestation)
    limit_cert, limit_sig = secagg.identity.MAX_CERTIFICATE_BYTES, secagg.identity.MAX_SIGNATURE_BYTES
    big_cert = struct.pack(">H", limit_cert + 1) + bytes(limit_cert + 1) + struct.pack(">H", 0)
    with pytest.raises(MalformedMessage, match="certificate longer"):
        AdvertiseKeys.decode(_header(1) + struct.pack(">H", 1) + b"a" + K1 + K2 + big_cert)
    big_sig = struct.pack(">H", 0) + struct.pack(">H", limit_sig + 1) + bytes(limit_sig + 1)
    with pytest.raises(MalformedMessage, match="signature longer"):
        AdvertiseKeys.decode(_header(1) + struct.pack(">H", 1) + b"a" + K1 + K2 + big_sig)
    with pytest.raises(MalformedMessage, match="signature longer"):
        ConsistencySignature.decode(_header(ConsistencySignature.TYPE) + struct.pack(">H", 1) + b"a"
                                    + struct.pack(">H", limit_sig + 1) + bytes(limit_sig + 1))
    dup = _header(UnmaskRequest.TYPE) + struct.pack(">I", 2) + (struct.pack(">H", 1) + b"a") * 2 + struct.pack(">I", 0)
    with pytest.raises(MalformedMessage, match="duplicate"):
        UnmaskRequest.decode(dup)
    dup = _header(ConsistencyCheck.TYPE) + struct.pack(">I", 2) + (struct.pack(">H", 1) + b"a") * 2
    with pytest.raises(MalformedMessage, match="duplicate"):
        ConsistencyCheck.decode(dup)
    dup_signer = (_header(UnmaskRequest.TYPE) + struct.pack(">I", 1) + struct.pack(">H", 1) + b"a"
                  + struct.pack(">I", 2) + (struct.pack(">H", 1) + b"a" + struct.pack(">H", 1) + b"s") * 2)
    with pytest.raises(MalformedMessage, match="duplicate signer"):
        UnmaskRequest.decode(dup_signer)
    dup_map = (
        _header(EncryptedShares.TYPE)
        + struct.pack(">H", 1)
        + b"r"
        + struct.pack(">I", 2)
        + (struct.pack(">H", 1) + b"a" + CT) * 2
    )
    with pytest.raises(MalformedMessage, match="duplicate"):
        EncryptedShares.decode(dup_map)


def test_share_values_are_range_checked() -> None:
    five = Share.of(1, [5] * LANES)
    ok = UnmaskResponse(SID, "a", {"a": five}, {}).encode()
    y_at = ok.index(five.encode()) + 2
    # One lane (the last) equal to p: not a field element.
    too_big = ok[:y_at] + bytes(4 * (LANES - 1)) + PRIME.to_bytes(4, "big") + ok[y_at + 4 * LANES :]
    assert len(too_big) == len(ok)
    with pytest.raises(MalformedMessage):
        UnmaskResponse.decode(too_big)
    both = UnmaskResponse(SID, "a", {"b": five}, {"b": Share.of(1, [6] * LANES)}).encode()
    with pytest.raises(MalformedMessage, match="both kinds"):
        UnmaskResponse.decode(both)


def test_encode_refuses_malformed_objects() -> None:
    with pytest.raises(MalformedMessage):
        AdvertiseKeys(SID, "a", b"short", K2).encode()
    with pytest.raises(MalformedMessage):
        ShareKeys(SID, "a", {"b": b"short"}).encode()
    with pytest.raises(MalformedMessage):
        MaskedInput(SID, "a", np.zeros(3, dtype=np.float64)).encode()  # type: ignore[arg-type]
    cert_limit, sig_limit = secagg.identity.MAX_CERTIFICATE_BYTES, secagg.identity.MAX_SIGNATURE_BYTES
    for too_long in (
        AdvertiseKeys(SID, "a", K1, K2, bytes(cert_limit + 1), SIG),
        AdvertiseKeys(SID, "a", K1, K2, CERT, bytes(sig_limit + 1)),
        KeyRoster(SID, {"a": NodeKeys(K1, K2, bytes(cert_limit + 1), SIG)}),
        KeyRoster(SID, {"a": NodeKeys(K1, K2, CERT, bytes(sig_limit + 1))}),
        ConsistencySignature(SID, "a", bytes(sig_limit + 1)),
        UnmaskRequest(SID, ("a",), {"a": bytes(sig_limit + 1)}),
    ):
        with pytest.raises(MalformedMessage, match="too long"):
            too_long.encode()
    # At the limits they still encode and round-trip.
    at_limit = AdvertiseKeys(SID, "a", K1, K2, bytes(cert_limit), bytes(sig_limit))
    assert AdvertiseKeys.decode(at_limit.encode()) == at_limit


def test_random_mutations_only_raise_bad_request() -> None:
    rng = random.Random(20240611)
    samples = [m.encode() for m in _samples()]
    for _ in range(3000):
        raw = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(raw))
            if op < 0.6:
                raw[pos] = rng.randrange(256)
            elif op < 0.8:
                del raw[pos : pos + rng.randint(1, 8)]
            else:
                raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            decode_message(bytes(raw))
        except BadRequest:
            pass
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        with pytest.raises(BadRequest):
            decode_message(blob)


def test_server_survives_garbage_without_state_change() -> None:
    cfg = SecAggConfig(session_id=SID, participants=["a", "b", "c"], vector_length=8)
    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in cfg.participants}
    good = {u: c.advertise_keys().encode() for u, c in clients.items()}
    rng = random.Random(7)
    for _ in range(500):
        raw = bytearray(good["a"])
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        try:
            server.receive("a", bytes(raw))
        except XdpError:
            pass
        else:
            # Flips inside a public key still make a well-formed message; the server must
            # then have recorded exactly that and refuse the genuine one as a conflicting resend.
            server = SecAggServer(cfg)
    assert server.expected_senders() == ("a", "b", "c")
    for u, raw in good.items():
        server.receive(u, raw)
    server.close_advertise_keys()
    assert server.phase is Phase.SHARE_KEYS
