"""TenSEAL / SEAL surgery: what TenSEAL does not offer, done on its serialised forms and SEAL objects.

TenSEAL is imported lazily (the gateway process never needs its C++ code, only the sandbox).
Here: wrapping a raw SEAL ciphertext as a ``CKKSVector`` and appending exactly the plan's Galois
keys to a public context, both by writing TenSEAL's protobuf fields by hand, and
:func:`load_context`, the check of a public context from outside, which must run inside the
sandbox (:mod:`xdp_compute.crypto.ckks.sandbox`).
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xdp_compute.crypto.ckks.envelope import context_fingerprint
from xdp_compute.crypto.ckks.params import (
    ALLOWED_POLY_MODULUS_DEGREES,
    InvalidHeContext,
    UnsafeHeContext,
    check_parameters,
)

if TYPE_CHECKING:
    import tenseal as ts


def tenseal_module() -> Any:
    """The ``tenseal`` module, with ``tenseal.sealapi`` loaded."""
    # Imported lazily: the gateway process never needs TenSEAL's C++ code, only the sandbox.
    import tenseal
    import tenseal.sealapi

    return tenseal


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def proto_bytes_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _temp_dir() -> tempfile.TemporaryDirectory[str]:
    shm = "/dev/shm"
    return tempfile.TemporaryDirectory(dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)


def save_seal_object(obj: Any) -> bytes:
    """The serialised bytes of a ``sealapi`` object."""
    # sealapi objects only save to a path; a private temporary directory keeps it local.
    with _temp_dir() as tmp:
        path = os.path.join(tmp, "obj")
        obj.save(path)
        return Path(path).read_bytes()


def ciphertext_to_vector(context: ts.Context, ciphertext: Any, size: int) -> ts.CKKSVector:
    """Wrap a raw SEAL ciphertext as a TenSEAL ``CKKSVector`` of ``size`` slots.

    Builds TenSEAL's ``CKKSVectorProto`` (sizes = 1, ciphertexts = 2, scale = 3) by hand, since
    TenSEAL offers no constructor from a raw ciphertext.
    """
    return tenseal_module().ckks_vector_from(context, vector_payload(ciphertext, size))


def vector_payload(ciphertext: Any, size: int) -> bytes:
    """TenSEAL's ``CKKSVectorProto`` bytes for one raw SEAL ciphertext of ``size`` slots."""
    return (
        proto_bytes_field(1, _varint(size))
        + proto_bytes_field(2, save_seal_object(ciphertext))
        + _varint(3 << 3 | 1)
        + struct.pack("<d", float(ciphertext.scale))
    )


@dataclass(frozen=True)
class ContextInfo:
    """What validation learnt about a public CKKS context."""

    fingerprint: str
    size_bytes: int
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    total_coeff_bits: int
    max_coeff_bits: int
    scale_bits: float
    n_galois_keys: int
    has_relin_keys: bool


def public_context_bytes(context: ts.Context, galois_elements: Sequence[int]) -> bytes:
    """The public part of ``context`` with Galois keys for exactly ``galois_elements``."""
    ts_mod = tenseal_module()
    public = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    if not galois_elements:
        return bytes(public)
    sealapi = ts_mod.sealapi
    seal_context = context.seal_context().data
    keygen = sealapi.KeyGenerator(seal_context, context.secret_key().data)
    # SEAL's create_galois_keys(list) takes Galois elements; the Serializable form is seeded
    # (half the size of an expanded key).
    galois = keygen.create_galois_keys(list(galois_elements))
    galois_bytes = save_seal_object(galois)
    # Protobuf merges a repeated embedded message field, so appending
    # TenSEALContextProto.public_context(2){galois_keys(5)} sets just that member.
    return bytes(public) + proto_bytes_field(2, proto_bytes_field(5, galois_bytes))


def load_context(data: bytes) -> tuple[ts.Context, ContextInfo]:
    """Deserialise and check a public context (meant to run inside the sandbox)."""
    ts_mod = tenseal_module()
    try:
        context = ts_mod.context_from(bytes(data), n_threads=1)
    except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
        # SEAL also refuses to load keys under parameters beyond its 128-bit bounds.
        raise InvalidHeContext(
            f"CKKS context could not be parsed (malformed, truncated, or parameters outside "
            f"SEAL's 128-bit security bounds): {type(exc).__name__}"
        ) from None
    if context.has_secret_key() or context.is_private():
        raise UnsafeHeContext("CKKS context holds a secret key; send the public context only")
    seal_context = context.seal_context().data
    if not seal_context.parameters_set():
        raise UnsafeHeContext(f"CKKS parameters are invalid: {seal_context.parameters_error_message()}")
    parms = seal_context.key_context_data().parms()
    # The enum comes from TenSEAL's own binding, not sealapi's: compare by name.
    if getattr(parms.scheme(), "name", None) != "CKKS":
        raise InvalidHeContext("context scheme is not CKKS")
    degree = parms.poly_modulus_degree()
    bits = tuple(m.bit_count() for m in parms.coeff_modulus())
    check_parameters(degree, bits)
    bound = ALLOWED_POLY_MODULUS_DEGREES[degree]
    if not context.has_public_key():
        raise InvalidHeContext("context has no public key (needed to re-randomise the result)")
    try:
        scale = float(context.global_scale)
    except Exception:  # noqa: BLE001  (TenSEAL raises when no scale was set)
        raise InvalidHeContext("context has no global scale") from None
    if not 2.0**20 <= scale <= 2.0 ** min(bits[1:-1]):
        raise InvalidHeContext("context global scale is outside [2^20, middle prime size]")
    n_galois = context.galois_keys().data.size() if context.has_galois_keys() else 0
    info = ContextInfo(
        fingerprint=context_fingerprint(bytes(data)),
        size_bytes=len(data),
        poly_modulus_degree=degree,
        coeff_mod_bit_sizes=bits,
        total_coeff_bits=sum(bits),
        max_coeff_bits=bound,
        scale_bits=math.log2(scale),
        n_galois_keys=n_galois,
        has_relin_keys=bool(context.has_relin_keys()),
    )
    return context, info
