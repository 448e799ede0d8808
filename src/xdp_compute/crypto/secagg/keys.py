"""Key agreement and every key the protocol derives, each HKDF-SHA256 bound to the session.

Bonawitz et al. 2017: Round 1 keys the encryption of shares with c_{u,v}, Round 2 seeds the
pairwise masks with s_{u,v} and the self mask with b_u. All derivations go through
:func:`xdp_compute.crypto.prg.derive_seed`, whose ``info`` binds purpose, session and parties, so
the same key material never yields the same mask in two sessions.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from xdp_compute.crypto import prg, shamir
from xdp_compute.crypto.secagg.config import SecAggConfig
from xdp_compute.errors import InvalidKey

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES
#: nonce || AES-GCM(share of s_sk || share of b_u) || tag.
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES


def _pair(config: SecAggConfig, u: str, v: str) -> list[bytes | str]:
    lo, hi = (u, v) if config.index(u) < config.index(v) else (v, u)
    return [config.session_id, lo, hi]


def agree(sk: X25519PrivateKey, pk_raw: bytes) -> bytes:
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(pk_raw))
    except ValueError as exc:  # low-order point -> all-zero secret, refused by OpenSSL
        raise InvalidKey("X25519 public key gives a degenerate shared secret") from exc


def pairwise_seed(config: SecAggConfig, s_sk: X25519PrivateKey, u: str, v: str, s_pk_v: bytes) -> bytes:
    # Round 2: s_{u,v} = KA.agree(s_u^SK, s_v^PK), then a PRG seed bound to session and pair.
    return prg.derive_seed(agree(s_sk, s_pk_v), purpose="pairwise-mask", context=_pair(config, u, v))


def self_mask_seed(config: SecAggConfig, u: str, b_u: bytes) -> bytes:
    return prg.derive_seed(b_u, purpose="self-mask", context=[config.session_id, u])


def share_key(config: SecAggConfig, c_sk: X25519PrivateKey, u: str, v: str, c_pk_v: bytes) -> bytes:
    # Round 1: c_{u,v} = KA.agree(c_u^SK, c_v^PK) keys the authenticated encryption of shares.
    return prg.derive_seed(agree(c_sk, c_pk_v), purpose="share-encryption", context=_pair(config, u, v))


def share_aad(config: SecAggConfig, sender: str, recipient: str) -> bytes:
    # Binds session and direction: the paper puts u || v inside the ciphertext for the same reason.
    return prg.hkdf_info("share-ciphertext", [config.session_id, sender, recipient])
