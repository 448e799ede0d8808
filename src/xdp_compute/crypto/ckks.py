"""CKKS encrypted scoring of a linear model (Cheon, Kim, Kim, Song 2017) with TenSEAL / SEAL.

Flow: an analyst (say, a bank) wants the per-group score sums of a linear model w against a
holder's rows without showing w. The SDK builds a CKKS context (:func:`make_scoring_context`)
and sends its **public** part plus ``Enc(w)`` (:func:`encrypt_weights`). A node computes, for
each group g, ``w . feature_sums[g] + noise[g]`` homomorphically (:func:`score_partial`): a
plaintext-matrix x encrypted-vector product. The gateway adds the nodes' ciphertexts
(:func:`add_ciphertexts`); the SDK decrypts (:func:`decrypt_scores`). A bias b is one more weight
against a feature that is 1 on every row (its group sum is the group's row count).

Matrix-vector product: the diagonal method of Halevi & Shoup (CRYPTO 2014, §4.1) with their
baby-step/giant-step split (§4.2, "BSGS"), adapted to a G x d matrix with the "hybrid" fold of
Juvekar, Vaikuntanathan & Chandrakasan (GAZELLE, USENIX Security 2018, §5.2):

* The SDK encrypts w zero-padded to P = 2^ceil(log2 d) and repeated across all slots, so a
  rotation by i gives slot k the weight w[(k + i) mod P].
* Wide case (G' = 2^ceil(log2 max_groups) <= P): G' generalised diagonals
  D_i[k] = F[k mod G', (k + i) mod P]; z = sum_i D_i * rot(w, i); then log2(P / G') rotate-and-add
  steps (shifts G', 2G', ..., P/2) sum each row's P/G' partial products. Because z has period P
  over the whole slot ring, every slot ends holding a *complete* row sum (slot k = score of row
  k mod G'): no slot holds a partial inner product, so no masking level is needed.
* Tall case (G' > P): P diagonals D_i[k] = F[k, (k + i) mod P] over the first G slots; no fold.
* BSGS: i = j*B + b; sum_i D_i * rot(w, i) = sum_j rot(sum_b rot(D_i, -jB) * rot(w, b), jB).
  Baby rotations act on the fresh ciphertext (B - 1 of them, key for step 1); each inner sum is
  rescaled first so giant rotations (Horner form, key for step B) and the fold work on one fewer
  prime, where SEAL's key switching is ~2x cheaper.
* Complex pairing: CKKS slots are complex and the diagonals real, so one complex plaintext
  carries the diagonals of giant steps j and j + m/(2B) (the second times the +-i slot pattern
  of the monomial X^(N/2)); this halves encodings, multiplications and rescales, for one extra
  rotation (by m/2) and one conjugation that takes the real part at the end (details in
  :func:`bsgs_matvec`).
* B and pairing minimise a cost model measured with SEAL (rotations on two primes ~2x one
  prime, rescale ~0.55, encode ~0.6) plus a charge per Galois key (context size).

The context holds Galois keys for exactly the steps this plan uses (1, B, m/2 and the fold
shifts, plus conjugation when paired; :meth:`ScoringPlan.galois_elements`), not TenSEAL's
default set of all powers of two, which is both larger and more than the node needs. One multiplicative level suffices: default ``coeff_mod_bit_sizes = (60, 40, 60)``
(160 bits <= 218 allowed for N = 8192 at 128-bit security), scale 2^40. Plaintext diagonals are
encoded at the scale of the prime that the rescale drops, so the result's scale is exactly the
weights' scale and ciphertexts from several nodes add without scale drift.

Noise and circuit privacy: the node adds its DP noise share (``noise[g]``, in every slot that
holds group g) and flooding noise N(0, flood_sigma^2) in every slot, both inside a *fresh*
public-key encryption that is added to the result. The fresh encryption re-randomises the
ciphertext (its mask polynomial becomes uniform); the flooding hides the CKKS approximation
error, which depends on the node's matrix. This is heuristic circuit privacy: provable
statistical hiding (noise flooding in the sense of Gentry 2009 / Li & Micciancio 2021) would
need flooding ~2^40 times the error, which CKKS precision cannot afford. The released value is
protected by the DP noise; ``flood_sigma`` is declared in the result header so the SDK can add
it to the error bar.

Bounds and precision: every slot value (score + noise, after the node scales its matrix and
noise by the public factor 2^-scale_exp that the SDK derived from ``score_bound``) must stay
below 2^(q0_bits - scale_bits - 3) (2^17 by default) or it wraps. Scaling the plaintext matrix
rather than the encrypted weights keeps the error independent of scale_exp: the dominant error
is the weights' encryption noise times the plaintext diagonals, so the absolute error grows with
max|feature_sums| (measured with N = 8192, scale 2^40, 16 features: ~6e-7 for |F| <= 1,
~5e-5 for |F| <= 100, ~5e-3 for |F| <= 1e4, ~0.4 for |F| <= 1e6: about 5e-7 * max|F|).

Borders: contexts and ciphertexts from outside are parsed only in a sandbox subprocess
(:mod:`xdp_compute.crypto._ckks_worker`); see :func:`validate_public_context`,
:func:`score_partial` and :func:`add_ciphertexts` (``sandbox=True`` by default). Overhead: one
interpreter start plus TenSEAL import (~0.2-0.5 s) and context parsing per call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import xdp_compute
from xdp_compute.crypto._ckks_worker import (
    REQUEST_MAGIC,
    RESPONSE_MAGIC,
    FrameError,
    pack_frame,
    unpack_frame,
)
from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.errors import (
    BadRequest,
    InvalidCiphertext,
    InvalidKey,
    InvalidSpec,
    PayloadTooLarge,
    WrongKey,
    XdpError,
)

if TYPE_CHECKING:
    import tenseal as ts

__all__ = [
    "ALLOWED_POLY_MODULUS_DEGREES",
    "DEFAULT_COEFF_MOD_BIT_SIZES",
    "DEFAULT_MAX_CIPHERTEXT_BYTES",
    "DEFAULT_MAX_CONTEXT_BYTES",
    "DEFAULT_POLY_MODULUS_DEGREE",
    "DEFAULT_SCALE_BITS",
    "ContextInfo",
    "HeSandboxFailure",
    "InvalidHeContext",
    "ScoringContext",
    "ScoringPlan",
    "UnsafeHeContext",
    "add_ciphertexts",
    "bsgs_matvec",
    "check_parameters",
    "ciphertext_to_vector",
    "decrypt_scores",
    "encrypt_weights",
    "load_scoring_context",
    "make_scoring_context",
    "save_scoring_context",
    "score_partial",
    "scores_header",
    "scoring_plan",
    "validate_public_context",
]

DEFAULT_POLY_MODULUS_DEGREE = 8192
DEFAULT_COEFF_MOD_BIT_SIZES: tuple[int, ...] = (60, 40, 60)
DEFAULT_SCALE_BITS = 40
#: Allowed ring degrees and SEAL's CoeffModulus::MaxBitCount at 128-bit classical security
#: (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1; SEAL ``hestdparms.h``).
ALLOWED_POLY_MODULUS_DEGREES: dict[int, int] = {8192: 218, 16384: 438, 32768: 881}
DEFAULT_MAX_CONTEXT_BYTES = 32 << 20
DEFAULT_MAX_CIPHERTEXT_BYTES = 4 << 20
DEFAULT_SANDBOX_TIMEOUT = 120.0
DEFAULT_SANDBOX_MEMORY = 4 << 30
_BOUND_MARGIN_BITS = 3  # keep slot values 8x below the wrap-around point
_MAX_FEATURE_MAGNITUDE = 2.0**40
_ENVELOPE_MAGIC = b"XCK1"
_CONTEXT_FILE_MAGIC = b"XCKS"
# Measured with SEAL at N = 8192, (60, 40, 60), in units of one rotation on one prime.
_ROTATION_COST_TOP = 2.0  # rotation of the fresh (two-prime) ciphertext
_RESCALE_COST = 0.55
_ENCODE_COST = 0.6  # encoding one diagonal at the top level (+ multiply_plain)
_KEY_COST = 1.0  # preference against larger contexts, per Galois key


class InvalidHeContext(BadRequest):
    """A CKKS context from outside is malformed or unusable for the requested computation."""

    slug, title = "invalid-he-context", "Invalid homomorphic-encryption context"


class UnsafeHeContext(InvalidHeContext):
    """A CKKS context holds a secret key or parameters below the security floor."""

    slug, title = "unsafe-he-context", "Unsafe homomorphic-encryption context"


class HeSandboxFailure(BadRequest):
    """The sandbox parsing outside HE bytes crashed or timed out: the input is rejected."""

    slug, title = "he-input-rejected", "Homomorphic-encryption input rejected"


# ----------------------------------------------------------------------------- plan


def _baby_giant_cost(baby: int, giant: int, paired: bool) -> float:
    baby_cost = _ROTATION_COST_TOP * (baby - 1)
    if not paired:
        return baby_cost + (giant - 1) + _RESCALE_COST * giant + _ENCODE_COST * baby * giant
    half = giant // 2
    # Horner over half the giant steps, one rotation by half*B, one conjugation, one monomial.
    return baby_cost + (half - 1) + 2.2 + _RESCALE_COST * half + _ENCODE_COST * baby * half


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@dataclass(frozen=True)
class ScoringPlan:
    """Layout of the encrypted G x d product; SDK and node derive it from the same inputs."""

    n_features: int
    max_groups: int
    slots: int
    period: int  # P: weights repeat every P slots
    wide: bool  # G' <= P: fold needed, outputs replicated with period ``rows``
    rows: int  # G' (wide) or ``slots`` (tall)
    n_diagonals: int  # m
    baby: int  # B
    giant: int  # m // B
    fold_steps: tuple[int, ...]
    paired: bool = False  # two real diagonals per complex plaintext (see bsgs_matvec)

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        """Left-rotation steps the node uses; the context needs a Galois key for each."""
        steps = set(self.fold_steps)
        if self.baby > 1:
            steps.add(1)
        horner = self.giant // 2 if self.paired else self.giant
        if horner > 1:
            steps.add(self.baby)
        if self.paired:
            steps.add(self.baby * (self.giant // 2))
        return tuple(sorted(steps))

    def galois_elements(self) -> tuple[int, ...]:
        """SEAL Galois elements for :attr:`rotation_steps` (and conjugation when paired)."""
        degree = 2 * self.slots
        elements = [_galois_elt(step, degree) for step in self.rotation_steps]
        if self.paired:
            elements.append(2 * degree - 1)  # complex conjugation: x -> x^(2N - 1)
        return tuple(elements)

    def diagonals(self, feature_sums: np.ndarray, start: int, count: int) -> np.ndarray:
        """Generalised diagonals start..start+count-1 (rows of length ``slots``) of the G x d matrix.

        D_i[k] = F[k mod rows, (k + i) mod P], zero outside the matrix (padding rows/columns).
        """
        k = np.arange(self.slots)
        n_rows, d = feature_sums.shape
        row = k % self.rows
        col = (k[None, :] + np.arange(start, start + count)[:, None]) % self.period
        valid = (row < n_rows)[None, :] & (col < d)
        values = feature_sums[np.minimum(row, n_rows - 1)[None, :], np.minimum(col, d - 1)]
        return np.where(valid, values, 0.0)

    def replicate_outputs(self, per_group: np.ndarray) -> np.ndarray:
        """Spread one value per group over every slot that holds that group's score."""
        out = np.zeros(self.slots)
        k = np.arange(self.slots)
        row = k % self.rows
        valid = row < per_group.shape[0]
        out[valid] = per_group[row[valid]]
        return out


def scoring_plan(
    n_features: int, max_groups: int, slots: int = DEFAULT_POLY_MODULUS_DEGREE // 2
) -> ScoringPlan:
    """Derive the diagonal / BSGS layout for ``max_groups`` x ``n_features`` with ``slots`` slots."""
    for name, value in (("n_features", n_features), ("max_groups", max_groups), ("slots", slots)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidSpec(f"{name} must be a positive integer")
    if slots & (slots - 1):
        raise InvalidSpec("slots must be a power of two")
    if n_features > slots or max_groups > slots:
        raise InvalidSpec(f"at most {slots} features and {slots} groups fit one ciphertext")
    period = _next_pow2(n_features)
    groups = _next_pow2(max_groups)
    if groups <= period:
        wide, rows, m = True, groups, groups
        fold = tuple(groups << s for s in range((period // groups).bit_length() - 1))
    else:
        wide, rows, m, fold = False, slots, period, ()
    # Pairing needs an even B (rotations by multiples of B keep the +-i pattern aligned) and
    # at least two giant steps to pair.
    options = [
        ScoringPlan(n_features, max_groups, slots, period, wide, rows, m, b, m // b, fold, paired)
        for b in (1 << e for e in range(m.bit_length()))
        for paired in (False, True)
        if not paired or (b % 2 == 0 and m // b >= 2)
    ]
    # Every Galois key adds ~0.35 MB to the context the analyst uploads: charge it too.
    return min(
        options,
        key=lambda o: (
            _baby_giant_cost(o.baby, o.giant, o.paired) + _KEY_COST * len(o.galois_elements()),
            o.baby,
            o.paired,
        ),
    )


# ----------------------------------------------------------------------------- TenSEAL helpers


def _tenseal() -> Any:
    # Imported lazily: the gateway process never needs TenSEAL's C++ code, only the sandbox.
    import tenseal
    import tenseal.sealapi

    return tenseal


def _galois_elt(step: int, poly_modulus_degree: int) -> int:
    # SEAL GaloisTool::get_elt_from_step: a left rotation by step > 0 is x -> x^(3^step mod 2N).
    return pow(3, step, 2 * poly_modulus_degree)


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


def _proto_bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _temp_dir() -> tempfile.TemporaryDirectory[str]:
    shm = "/dev/shm"
    return tempfile.TemporaryDirectory(dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)


def _save_seal_object(obj: Any) -> bytes:
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
    return _tenseal().ckks_vector_from(context, _vector_payload(ciphertext, size))


def _vector_payload(ciphertext: Any, size: int) -> bytes:
    return (
        _proto_bytes_field(1, _varint(size))
        + _proto_bytes_field(2, _save_seal_object(ciphertext))
        + _varint(3 << 3 | 1)
        + struct.pack("<d", float(ciphertext.scale))
    )


def _fingerprint(public_context: bytes) -> str:
    return hashlib.sha256(b"xdp-compute/ckks-context\x00" + public_context).hexdigest()


def _gaussian(size: int, sigma: float) -> np.ndarray:
    """N(0, sigma^2) samples from the OS CSPRNG (Box-Muller over 53-bit uniforms)."""
    if sigma == 0 or size == 0:
        return np.zeros(size)
    raw = np.frombuffer(os.urandom(16 * ((size + 1) // 2)), dtype=np.uint64).reshape(2, -1)
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return sigma * z[:size]


# ----------------------------------------------------------------------------- envelopes


def _pack_envelope(header: dict[str, Any], payload: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _ENVELOPE_MAGIC + struct.pack(">I", len(raw)) + raw + payload


def _unpack_envelope(data: bytes, kind: str, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidCiphertext(f"encrypted {kind} must be bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"encrypted {kind} is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes
        )
    data = bytes(data)
    if len(data) < 8 or data[:4] != _ENVELOPE_MAGIC:
        raise InvalidCiphertext(f"encrypted {kind} has a bad magic number or is truncated")
    (head_len,) = struct.unpack_from(">I", data, 4)
    if head_len > 4096 or 8 + head_len > len(data):
        raise InvalidCiphertext(f"encrypted {kind} header is truncated or too long")
    try:
        header = json.loads(data[8 : 8 + head_len])
    except (ValueError, UnicodeDecodeError):
        raise InvalidCiphertext(f"encrypted {kind} header is not JSON") from None
    if not isinstance(header, dict) or header.get("kind") != kind or header.get("v") != 1:
        raise InvalidCiphertext(f"not an encrypted {kind} envelope")
    payload = data[8 + head_len :]
    if not payload:
        raise InvalidCiphertext(f"encrypted {kind} is truncated (no ciphertext)")
    return header, payload


def _int_member(header: dict[str, Any], name: str, low: int, high: int) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidCiphertext(f"envelope member {name!r} must be an integer in [{low}, {high}]")
    return value


def _float_member(header: dict[str, Any], name: str) -> float:
    value = header.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidCiphertext(f"envelope member {name!r} must be a finite non-negative number")
    return float(value)


def _weights_plan(header: dict[str, Any]) -> ScoringPlan:
    slots = _int_member(header, "slots", 1, max(ALLOWED_POLY_MODULUS_DEGREES) // 2)
    if slots * 2 not in ALLOWED_POLY_MODULUS_DEGREES:
        raise InvalidCiphertext("weights envelope declares an unsupported slot count")
    d = _int_member(header, "n_features", 1, slots)
    g = _int_member(header, "max_groups", 1, slots)
    return scoring_plan(d, g, slots)


# ----------------------------------------------------------------------------- SDK side


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


class ScoringContext:
    """The analyst's CKKS context (holds the secret key) and the plan it was made for."""

    def __init__(self, context: ts.Context, plan: ScoringPlan, public_bytes: bytes) -> None:
        self.context = context
        self.plan = plan
        self.public_bytes = public_bytes
        self.fingerprint = _fingerprint(public_bytes)

    def __repr__(self) -> str:
        return f"ScoringContext(plan={self.plan!r}, fingerprint={self.fingerprint[:16]}...)"

    @property
    def scale_bits(self) -> float:
        """log2 of the global scale."""
        return math.log2(self.context.global_scale)

    @property
    def value_bound_bits(self) -> int:
        """Slot values (after 2^-scale_exp scaling) must stay below 2^value_bound_bits."""
        parms = self.context.seal_context().data.first_context_data().parms()
        q0_bits = parms.coeff_modulus()[0].bit_count()
        return int(q0_bits - self.scale_bits) - _BOUND_MARGIN_BITS


def _public_context_bytes(context: ts.Context, galois_elements: Sequence[int]) -> bytes:
    ts_mod = _tenseal()
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
    galois_bytes = _save_seal_object(galois)
    # Protobuf merges a repeated embedded message field, so appending
    # TenSEALContextProto.public_context(2){galois_keys(5)} sets just that member.
    return bytes(public) + _proto_bytes_field(2, _proto_bytes_field(5, galois_bytes))


def make_scoring_context(
    n_features: int,
    max_groups: int,
    *,
    poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
    coeff_mod_bit_sizes: Sequence[int] = DEFAULT_COEFF_MOD_BIT_SIZES,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> ScoringContext:
    """Build the analyst's CKKS context for scoring ``max_groups`` groups on ``n_features`` weights.

    Generates Galois keys only for the rotations of :func:`scoring_plan` (n_features, max_groups).
    Rejects parameters the nodes would reject (degree not allowed, too many modulus bits).
    """
    bits = [int(b) for b in coeff_mod_bit_sizes]
    try:
        check_parameters(poly_modulus_degree, bits)
    except InvalidHeContext as exc:
        raise InvalidSpec(exc.detail) from None
    if not 20 <= scale_bits <= min(bits[1:-1]):
        raise InvalidSpec("scale_bits must be >= 20 and no larger than the middle primes")
    plan = scoring_plan(n_features, max_groups, poly_modulus_degree // 2)
    ts_mod = _tenseal()
    context = ts_mod.context(
        ts_mod.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree, coeff_mod_bit_sizes=bits
    )
    context.global_scale = 2.0**scale_bits
    return ScoringContext(context, plan, _public_context_bytes(context, plan.galois_elements()))


def save_scoring_context(
    path: str | os.PathLike[str], sctx: ScoringContext, *, overwrite: bool = False
) -> None:
    """Write the analyst's context (secret key included) to a new 0600 file."""
    secret = bytes(
        sctx.context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
    )
    header = json.dumps({"plan": [sctx.plan.n_features, sctx.plan.max_groups, sctx.plan.slots]}).encode()
    body = struct.pack(">III", len(header), len(secret), len(sctx.public_bytes))
    write_secret_file(
        path, _CONTEXT_FILE_MAGIC + body + header + secret + sctx.public_bytes, overwrite=overwrite
    )


def load_scoring_context(path: str | os.PathLike[str]) -> ScoringContext:
    """Load a context written by :func:`save_scoring_context` (refuses group/other-readable files)."""
    data = read_secret_file(path, max_bytes=DEFAULT_MAX_CONTEXT_BYTES * 2)
    try:
        if data[:4] != _CONTEXT_FILE_MAGIC:
            raise ValueError("magic")
        head_len, secret_len, public_len = struct.unpack_from(">III", data, 4)
        pos = 16
        header = json.loads(data[pos : pos + head_len])
        secret = data[pos + head_len : pos + head_len + secret_len]
        public = data[pos + head_len + secret_len :]
        if len(public) != public_len:
            raise ValueError("length")
        d, g, slots = header["plan"]
        context = _tenseal().context_from(secret)
    except Exception:  # noqa: BLE001  (TenSEAL's C++ binding raises assorted types)
        raise InvalidKey("not a readable xdp-compute CKKS context file") from None
    if not context.has_secret_key():
        raise InvalidKey("CKKS context file holds no secret key")
    return ScoringContext(context, scoring_plan(int(d), int(g), int(slots)), public)


def encrypt_weights(
    sctx: ScoringContext, weights: Sequence[float] | np.ndarray, *, score_bound: float = 2.0**17
) -> bytes:
    """Encrypt a weight vector (bias last, if any) for :func:`score_partial`.

    ``score_bound`` must bound, summed over all nodes, every partial sum the node forms, i.e.
    sum_j |w_j| * |feature_sums[g, j]| + |noise| (intermediate slots hold partial inner
    products, so cancellation in the final score does not help); a safe choice is
    sum_j |w_j| * (clip bound of feature j) * (largest group size). From it the SDK picks
    scale_exp (recorded in the envelope); nodes scale their matrix and noise by 2^-scale_exp so
    slots stay below the wrap-around point (beyond it the result is garbage, not an error), and
    :func:`decrypt_scores` multiplies back. Precision does not depend on scale_exp.
    """
    w = np.asarray(weights, dtype=np.float64)
    plan = sctx.plan
    if w.ndim != 1 or w.shape[0] != plan.n_features:
        raise InvalidSpec(f"weights must be a vector of {plan.n_features} values (the context's n_features)")
    if not np.all(np.isfinite(w)):
        raise InvalidSpec("weights must be finite")
    if not math.isfinite(score_bound) or score_bound <= 0:
        raise InvalidSpec("score_bound must be a positive number")
    scale_exp = max(0, math.ceil(math.log2(score_bound)) - sctx.value_bound_bits)
    padded = np.zeros(plan.period)
    padded[: plan.n_features] = w
    replicated = np.tile(padded, plan.slots // plan.period)
    vector = _tenseal().ckks_vector(sctx.context, replicated.tolist())
    header = {
        "v": 1,
        "kind": "weights",
        "context": sctx.fingerprint,
        "n_features": plan.n_features,
        "max_groups": plan.max_groups,
        "slots": plan.slots,
        "scale_exp": scale_exp,
    }
    return _pack_envelope(header, bytes(vector.serialize()))


def decrypt_scores(
    sctx: ScoringContext,
    data: bytes,
    n_groups: int,
    *,
    max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
) -> np.ndarray:
    """Decrypt a (summed) score ciphertext: one value per group, in score units.

    ``WrongKey`` if it was made under another context. Runs in-process: the analyst parses
    bytes relayed by the gateway with its own secret key, which should not leave the process.
    """
    header, payload = _unpack_envelope(data, "scores", max_bytes)
    if header.get("context") != sctx.fingerprint:
        raise WrongKey("these scores were computed under another CKKS context (fingerprint mismatch)")
    groups = _int_member(header, "n_groups", 1, sctx.plan.slots)
    scale_exp = _int_member(header, "scale_exp", 0, 1024)
    if groups != n_groups:
        raise InvalidCiphertext(f"the result holds {groups} groups, not {n_groups}")
    try:
        vector = _tenseal().ckks_vector_from(sctx.context, payload)
        values = np.asarray(vector.decrypt(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
        raise InvalidCiphertext(f"score ciphertext could not be decrypted: {type(exc).__name__}") from None
    if values.shape[0] != groups:
        raise InvalidCiphertext("score ciphertext size does not match its header")
    return values * 2.0**scale_exp


# ----------------------------------------------------------------------------- node / gateway core


def check_parameters(poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int]) -> None:
    """Refuse CKKS parameters below the floor (``UnsafeHeContext``) or without a level.

    The degree must be in ``ALLOWED_POLY_MODULUS_DEGREES`` and the total coefficient modulus
    (special prime included) within SEAL's 128-bit bound for it.
    """
    bound = ALLOWED_POLY_MODULUS_DEGREES.get(poly_modulus_degree)
    if bound is None:
        raise UnsafeHeContext(
            f"poly modulus degree {poly_modulus_degree} is not allowed; "
            f"use one of {sorted(ALLOWED_POLY_MODULUS_DEGREES)}"
        )
    total = sum(coeff_mod_bit_sizes)
    if total > bound:
        raise UnsafeHeContext(
            f"coefficient modulus of {total} bits exceeds the 128-bit security bound ({bound}) "
            f"for N={poly_modulus_degree}"
        )
    if len(coeff_mod_bit_sizes) < 3:
        raise InvalidHeContext("context needs at least one multiplicative level (3 primes)")


def _load_context(data: bytes) -> tuple[ts.Context, ContextInfo]:
    """Deserialise and check a public context (meant to run inside the sandbox)."""
    ts_mod = _tenseal()
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
        fingerprint=_fingerprint(bytes(data)),
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


def _alternating_i(slots: int) -> np.ndarray:
    # X^(N/2) evaluates to i at a root zeta^g with g = 1 (mod 4) and to -i when g = 3 (mod 4);
    # SEAL puts slot k at g = 3^k mod 2N, so the pattern alternates. Encoded at scale 1 this
    # vector is exactly the monomial X^(N/2) (integer coefficients, no rounding): an exact
    # multiplication by +-i that costs no level.
    return np.where(np.arange(slots) % 2 == 0, 1j, -1j)


def bsgs_matvec(context: ts.Context, weights: Any, feature_sums: np.ndarray, plan: ScoringPlan) -> Any | None:
    """Encrypted weights x plaintext G x d matrix by diagonals with baby-step/giant-step.

    ``weights`` is the raw SEAL ciphertext of the replicated weight vector at the first level.
    Returns a SEAL ciphertext one level down whose slot k holds the score of group k mod rows
    (wide plan) or of group k (tall plan), at exactly the weights' scale; ``None`` if the matrix
    is all zero (SEAL refuses transparent results). Cites: Halevi & Shoup 2014 §4.1-4.2.

    Paired plans (``plan.paired``) put two real diagonals in one complex plaintext, halving the
    encodings, multiplications and rescales: with H = giant/2 and sigma the +-i pattern of
    X^(N/2) (see ``_alternating_i``), X_j = sum_b (E_j,b + sigma * E_j+H,b) / 2 * rot(w, b), so
    Y = sum_{j<H} rot(X_j, jB) = (U + sigma * V) / 2 with U, V the real Horner sums of the low
    and high halves (B even keeps sigma aligned under the rotations). Multiplying by the
    monomial gives sigma * Y = (sigma * U - V) / 2, hence
    Re(Y - rot(sigma * Y, HB)) = (U + rot(V, HB)) / 2, and the real part is taken with one
    conjugation at the end: T + conj(T) = U + rot(V, HB), the full giant-step sum.
    """
    sealapi = _tenseal().sealapi
    seal_context = context.seal_context().data
    galois = context.galois_keys().data if plan.galois_elements() else None
    evaluator = sealapi.Evaluator(seal_context)
    encoder = sealapi.CKKSEncoder(seal_context)
    parms_id = weights.parms_id()
    level = seal_context.get_context_data(parms_id)
    # Encode diagonals at the scale of the prime that rescale drops: the product then comes
    # back to exactly the weights' scale.
    drop_scale = float(level.parms().coeff_modulus()[-1].value())
    zero_cut = 0.5 / drop_scale  # entries below this encode to 0
    baby = plan.baby
    half = plan.giant // 2 if plan.paired else plan.giant
    sigma = _alternating_i(plan.slots)

    babies = [weights]
    for _ in range(1, baby):  # baby steps: rot(w, b) = rot(rot(w, b - 1), 1)
        rotated = sealapi.Ciphertext()
        evaluator.rotate_vector(babies[-1], 1, galois, rotated)
        babies.append(rotated)

    inner: list[Any | None] = []
    for j in range(half):
        # rot(D, -jB)[k] = D[k - jB]: pre-rotated diagonals for giant step j.
        block: np.ndarray = np.roll(plan.diagonals(feature_sums, j * baby, baby), j * baby, axis=1)
        if plan.paired:
            high = np.roll(plan.diagonals(feature_sums, (j + half) * baby, baby), (j + half) * baby, axis=1)
            block = 0.5 * (block + sigma[None, :] * high)
        acc = None
        for b in range(baby):
            diag = block[b]
            if not np.any(np.abs(diag) >= zero_cut):
                continue  # an all-zero plaintext would make a transparent ciphertext
            plain = sealapi.Plaintext()
            encoder.encode(diag.tolist(), parms_id, drop_scale, plain)
            product = sealapi.Ciphertext()
            evaluator.multiply_plain(babies[b], plain, product)
            if acc is None:
                acc = product
            else:
                evaluator.add_inplace(acc, product)
        if acc is not None:
            evaluator.rescale_to_next_inplace(acc)  # giant steps then run on one fewer prime
        inner.append(acc)

    result = None
    for j in reversed(range(half)):  # Horner: sum_j rot(I_j, jB)
        if result is not None:
            evaluator.rotate_vector_inplace(result, baby, galois)
        if inner[j] is not None:
            if result is None:
                result = inner[j]
            else:
                evaluator.add_inplace(result, inner[j])
    if result is None:
        return None
    if plan.paired:
        monomial = sealapi.Plaintext()
        encoder.encode(sigma.tolist(), result.parms_id(), 1.0, monomial)
        shifted = sealapi.Ciphertext()
        evaluator.multiply_plain(result, monomial, shifted)
        evaluator.rotate_vector_inplace(shifted, half * baby, galois)
        evaluator.sub_inplace(result, shifted)
    for shift in plan.fold_steps:  # GAZELLE hybrid fold: add row sums over the period
        rotated = sealapi.Ciphertext()
        evaluator.rotate_vector(result, shift, galois, rotated)
        evaluator.add_inplace(result, rotated)
    if plan.paired:
        conjugate = sealapi.Ciphertext()
        evaluator.complex_conjugate(result, galois, conjugate)
        evaluator.add_inplace(result, conjugate)  # 2 Re(T)
    return result


def _check_weights_ciphertext(context: ts.Context, vector: Any, plan: ScoringPlan) -> Any:
    ciphertexts = vector.ciphertext()
    if vector.size() != plan.slots or len(ciphertexts) != 1:
        raise InvalidCiphertext(f"encrypted weights must fill all {plan.slots} slots of one ciphertext")
    ct = ciphertexts[0]
    seal_context = context.seal_context().data
    if ct.parms_id() != seal_context.first_parms_id():
        raise InvalidCiphertext("encrypted weights are not at the top level of the context")
    if ct.size() != 2:
        raise InvalidCiphertext("encrypted weights must be a size-2 ciphertext")
    if ct.scale != context.global_scale:
        raise InvalidCiphertext("encrypted weights are not at the context's global scale")
    return ct


def _score_in_process(
    public_context: bytes,
    weights_header: dict[str, Any],
    weights_payload: bytes,
    feature_sums: np.ndarray,
    noise: np.ndarray,
    flood_sigma: float,
) -> bytes:
    ts_mod = _tenseal()
    context, info = _load_context(public_context)
    plan = _weights_plan(weights_header)
    if plan.slots * 2 != info.poly_modulus_degree:
        raise InvalidCiphertext("weights envelope slot count does not match the context")
    if plan.galois_elements():
        if not context.has_galois_keys():
            raise InvalidHeContext("context has no Galois keys but the plan needs rotations")
        keys = context.galois_keys().data
        for element in plan.galois_elements():
            if not keys.has_key(element):
                raise InvalidHeContext(f"context lacks the Galois key for element {element} (rotation plan)")
    try:
        vector = ts_mod.ckks_vector_from(context, weights_payload)
    except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
        raise InvalidCiphertext(f"encrypted weights could not be parsed: {type(exc).__name__}") from None
    weights = _check_weights_ciphertext(context, vector, plan)
    scale_exp = _int_member(weights_header, "scale_exp", 0, 1024)

    factor = 2.0**-scale_exp  # exact power of two: no rounding in the scaling itself
    result = bsgs_matvec(context, weights, feature_sums * factor, plan)
    sealapi = ts_mod.sealapi
    seal_context = context.seal_context().data
    evaluator = sealapi.Evaluator(seal_context)
    last = seal_context.last_parms_id()
    if result is not None and result.parms_id() != last:
        evaluator.mod_switch_to_inplace(result, last)  # smaller ciphertext, uniform level

    # Noise goes in through a fresh public-key encryption: DP share in every slot holding the
    # group, flooding in every slot; the fresh encryption re-randomises the ciphertext.
    groups = feature_sums.shape[0]
    slot_noise = (plan.replicate_outputs(noise) + _gaussian(plan.slots, flood_sigma)) * factor
    encoder = sealapi.CKKSEncoder(seal_context)
    plain = sealapi.Plaintext()
    encoder.encode(slot_noise.tolist(), last, float(context.global_scale), plain)
    fresh = sealapi.Ciphertext()
    sealapi.Encryptor(seal_context, context.public_key().data).encrypt(plain, fresh)
    if result is None:
        result = fresh
    else:
        evaluator.add_inplace(result, fresh)

    return _vector_payload(result, groups)


def _add_in_process(public_context: bytes, headers: list[dict[str, Any]], payloads: list[bytes]) -> bytes:
    ts_mod = _tenseal()
    context, _info = _load_context(public_context)
    seal_context = context.seal_context().data
    groups = headers[0]["n_groups"]
    total = None
    for index, payload in enumerate(payloads):
        try:
            vector = ts_mod.ckks_vector_from(context, payload)
        except Exception as exc:  # noqa: BLE001  (foreign C++ code: any failure means bad input)
            raise InvalidCiphertext(
                f"score ciphertext {index} could not be parsed: {type(exc).__name__}"
            ) from None
        cts = vector.ciphertext()
        if vector.size() != groups or len(cts) != 1:
            raise InvalidCiphertext(
                f"score ciphertext {index} does not hold {groups} groups in one ciphertext"
            )
        ct = cts[0]
        if ct.parms_id() != seal_context.last_parms_id() or ct.size() != 2:
            raise InvalidCiphertext(f"score ciphertext {index} is not a size-2 ciphertext at the last level")
        if ct.scale != context.global_scale:
            raise InvalidCiphertext(f"score ciphertext {index} is not at the context's global scale")
        total = vector if total is None else total.add(vector)
    assert total is not None

    return bytes(total.serialize())


def _worker_dispatch(header: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Entry point inside the sandbox worker: run one operation on already size-checked input."""
    op = header.get("op")
    if op == "validate":
        _context, info = _load_context(blobs[0])
        return {"info": asdict(info)}, []
    if op == "score":
        groups, d = header["shape"]
        features = np.frombuffer(blobs[2], dtype="<f8").reshape(groups, d)
        noise = np.frombuffer(blobs[3], dtype="<f8").reshape(groups)
        payload = _score_in_process(
            blobs[0], header["weights_header"], blobs[1], features, noise, float(header["flood_sigma"])
        )
        return {}, [payload]
    if op == "add":
        payload = _add_in_process(blobs[0], header["headers"], blobs[1:])
        return {}, [payload]
    raise BadRequest(f"unknown sandbox operation {op!r}")


# ----------------------------------------------------------------------------- sandbox


_ERRORS: dict[str, type[XdpError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest,
        InvalidHeContext,
        UnsafeHeContext,
        InvalidCiphertext,
        InvalidSpec,
        PayloadTooLarge,
    )
}


def _package_root() -> str:
    return str(Path(xdp_compute.__file__).resolve().parent.parent)


def _worker_command() -> list[str]:
    # -I: isolated mode (no PYTHON* variables, no user site, no cwd on sys.path); the package
    # root is put on the path explicitly.
    boot = (
        f"import sys; sys.path.insert(0, {_package_root()!r}); "
        "from xdp_compute.crypto._ckks_worker import main; raise SystemExit(main())"
    )
    return [sys.executable, "-I", "-c", boot]


def _run_sandboxed(
    header: dict[str, Any], blobs: Sequence[bytes], *, timeout: float, memory_bytes: int
) -> tuple[dict[str, Any], list[bytes]]:
    request = pack_frame(
        REQUEST_MAGIC,
        {**header, "memory_bytes": memory_bytes, "cpu_seconds": math.ceil(timeout) + 5},
        blobs,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
    except OSError as exc:
        raise XdpError(f"could not start the CKKS sandbox: {exc.strerror}") from None
    try:
        out, _ = proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise HeSandboxFailure(
            f"HE input rejected: processing did not finish within {timeout:.0f} s"
        ) from None
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise HeSandboxFailure(f"HE input rejected: the parser crashed ({how})", exit=proc.returncode)
    try:
        answer, out_blobs = unpack_frame(RESPONSE_MAGIC, out)
    except FrameError:
        raise HeSandboxFailure("HE input rejected: the sandbox gave no valid answer") from None
    if not answer.get("ok"):
        error = _ERRORS.get(str(answer.get("error")), BadRequest)
        raise error(str(answer.get("detail", "HE input rejected"))[:1000])
    return answer, out_blobs


def _check_size(data: Any, max_bytes: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidHeContext(f"{what} must be bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    if not data:
        raise InvalidHeContext(f"{what} is empty")
    return bytes(data)


def validate_public_context(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    *,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> ContextInfo:
    """Check a public CKKS context from outside; return what it holds.

    Raises ``PayloadTooLarge`` (413) over ``max_bytes``; ``UnsafeHeContext`` (400) if it holds a
    secret key, its degree is not in ``ALLOWED_POLY_MODULUS_DEGREES`` or its coefficient
    modulus exceeds the 128-bit bound; ``InvalidHeContext`` (400) if malformed, not CKKS, or
    missing the public key; ``HeSandboxFailure`` (400) if parsing crashed or hung.
    """
    raw = _check_size(data, max_bytes, "CKKS context")
    if not sandbox:
        return _load_context(raw)[1]
    answer, _ = _run_sandboxed({"op": "validate"}, [raw], timeout=timeout, memory_bytes=memory_bytes)
    info = dict(answer["info"])
    info["coeff_mod_bit_sizes"] = tuple(info["coeff_mod_bit_sizes"])
    return ContextInfo(**info)


def score_partial(
    public_context_bytes: bytes,
    enc_weights_bytes: bytes,
    feature_sums: np.ndarray,
    noise: np.ndarray,
    flood_sigma: float,
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    max_ciphertext_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> bytes:
    """Node side: encrypted per-group scores ``w . feature_sums[g] + noise[g]`` (+ flooding).

    ``feature_sums`` is G x d (per group, the sum over its filtered rows of the clipped feature
    vector; G <= the context's ``max_groups``), ``noise`` the node's DP noise share per group,
    ``flood_sigma`` the standard deviation of the circuit-privacy flooding (score units, may be
    0). Validates the context and the weights (sizes here; contents in the sandbox) and runs
    the computation in the sandbox unless ``sandbox=False`` (trusted bytes only).
    """
    context = _check_size(public_context_bytes, max_context_bytes, "CKKS context")
    header, payload = _unpack_envelope(enc_weights_bytes, "weights", max_ciphertext_bytes)
    if header.get("context") != _fingerprint(context):
        raise InvalidCiphertext("encrypted weights were made under another CKKS context")
    plan = _weights_plan(header)
    features = np.asarray(feature_sums, dtype=np.float64)
    noise_arr = np.asarray(noise, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or features.shape[1] != plan.n_features:
        raise InvalidSpec(f"feature_sums must be G x {plan.n_features}")
    groups = features.shape[0]
    if not 1 <= groups <= plan.max_groups:
        raise InvalidSpec(f"feature_sums has {groups} groups; the context allows 1..{plan.max_groups}")
    if noise_arr.shape != (groups,):
        raise InvalidSpec(f"noise must hold one value per group ({groups})")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(noise_arr))):
        raise InvalidSpec("feature_sums and noise must be finite")
    if np.max(np.abs(features)) > _MAX_FEATURE_MAGNITUDE:
        raise InvalidSpec("feature sums above 2^40 in magnitude are not supported")
    if not math.isfinite(flood_sigma) or flood_sigma < 0:
        raise InvalidSpec("flood_sigma must be a finite non-negative number")
    features = np.ascontiguousarray(features)
    # The result header is built here from what this process validated, not taken from the
    # sandbox: a compromised worker can at worst return a bad ciphertext.
    out_header = _scores_header(
        _fingerprint(context), groups, _int_member(header, "scale_exp", 0, 1024), 1, float(flood_sigma) ** 2
    )
    if not sandbox:
        out = _score_in_process(context, header, payload, features, noise_arr, float(flood_sigma))
        return _pack_envelope(out_header, out)
    _answer, blobs = _run_sandboxed(
        {
            "op": "score",
            "weights_header": header,
            "shape": [groups, plan.n_features],
            "flood_sigma": float(flood_sigma),
        },
        [context, payload, features.astype("<f8").tobytes(), noise_arr.astype("<f8").tobytes()],
        timeout=timeout,
        memory_bytes=memory_bytes,
    )
    return _pack_envelope(out_header, _single_blob(blobs))


def add_ciphertexts(
    public_context_bytes: bytes,
    ciphertexts: Sequence[bytes],
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
    max_ciphertext_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
    max_inputs: int = 1024,
    sandbox: bool = True,
    timeout: float = DEFAULT_SANDBOX_TIMEOUT,
    memory_bytes: int = DEFAULT_SANDBOX_MEMORY,
) -> bytes:
    """Gateway side: add nodes' score ciphertexts (same context, groups and scaling).

    Needs only the public context. Contribution counts and flooding variances add up in the
    result header. Every input is size-checked here and parsed in the sandbox.
    """
    context = _check_size(public_context_bytes, max_context_bytes, "CKKS context")
    if not ciphertexts:
        raise InvalidCiphertext("nothing to add")
    if len(ciphertexts) > max_inputs:
        raise PayloadTooLarge(
            f"{len(ciphertexts)} ciphertexts; at most {max_inputs} may be added", limit=max_inputs
        )
    fingerprint = _fingerprint(context)
    headers: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for index, data in enumerate(ciphertexts):
        header, payload = _unpack_envelope(data, "scores", max_ciphertext_bytes)
        if header.get("context") != fingerprint:
            raise InvalidCiphertext(f"score ciphertext {index} was made under another CKKS context")
        clean = {
            "n_groups": _int_member(header, "n_groups", 1, max(ALLOWED_POLY_MODULUS_DEGREES) // 2),
            "scale_exp": _int_member(header, "scale_exp", 0, 1024),
            "n_contributions": _int_member(header, "n_contributions", 1, 1 << 20),
            "flood_variance": _float_member(header, "flood_variance"),
        }
        if headers and (clean["n_groups"], clean["scale_exp"]) != (
            headers[0]["n_groups"],
            headers[0]["scale_exp"],
        ):
            raise InvalidCiphertext(f"score ciphertext {index} has different groups or scaling")
        headers.append(clean)
        payloads.append(payload)
    out_header = _scores_header(
        fingerprint,
        headers[0]["n_groups"],
        headers[0]["scale_exp"],
        sum(h["n_contributions"] for h in headers),
        sum(h["flood_variance"] for h in headers),
    )
    if not sandbox:
        out = _add_in_process(context, headers, payloads)
        return _pack_envelope(out_header, out)
    _answer, blobs = _run_sandboxed(
        {"op": "add", "headers": headers}, [context, *payloads], timeout=timeout, memory_bytes=memory_bytes
    )
    return _pack_envelope(out_header, _single_blob(blobs))


def _scores_header(
    fingerprint: str, groups: int, scale_exp: int, contributions: int, flood_variance: float
) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "scores",
        "context": fingerprint,
        "n_groups": groups,
        "scale_exp": scale_exp,
        "n_contributions": contributions,
        "flood_variance": flood_variance,
    }


def _single_blob(blobs: list[bytes]) -> bytes:
    if len(blobs) != 1 or not blobs[0]:
        raise HeSandboxFailure("HE input rejected: the sandbox returned no ciphertext")
    return blobs[0]


def scores_header(data: bytes, *, max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES) -> dict[str, Any]:
    """The metadata of a score envelope (groups, contributions, flooding variance, scaling)."""
    header, _ = _unpack_envelope(data, "scores", max_bytes)
    return header


def weights_header(data: bytes, public_context: bytes, *, max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES
                   ) -> dict[str, Any]:
    """Gateway border check of encrypted weights: size, envelope, and that they belong to
    ``public_context`` (the ciphertext itself is parsed only in the node's sandbox)."""
    header, _ = _unpack_envelope(data, "weights", max_bytes)
    if header.get("context") != _fingerprint(public_context):
        raise InvalidCiphertext("encrypted weights were made under another CKKS context")
    _weights_plan(header)
    return header


def context_fingerprint(public_context: bytes) -> str:
    """The fingerprint envelopes carry to bind ciphertexts to their context."""
    return _fingerprint(public_context)
