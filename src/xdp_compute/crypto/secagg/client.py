"""One node's side of secure aggregation (Bonawitz et al. 2017, Fig. 4, the active-adversary variant).

:class:`SecAggClient` runs Rounds 0 to 4 in order, once each. Its secrets come from the OS
CSPRNG and are erased as soon as the masked vector is out (Round 2); what it keeps for Round 4
are the peers' shares, and it reveals at most one kind of share per peer.

With an identity (``signer``) and the deployment CA (``verifier``), the client signs its keys and
the survivor set it saw, and refuses any peer key, roster or survivor set that is not signed by
a certified node: a gateway that substitutes keys, or tells nodes different survivor sets, makes
honest clients abort instead of revealing anything (``identity``). Without them (nodes on
plaintext loopback) the rounds are the same and nothing is authenticated: honest-but-curious.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xdp_compute.crypto import prg, shamir
from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.pki import NodeIdentity
from xdp_compute.crypto.secagg.codec import check_key
from xdp_compute.crypto.secagg.config import (
    MalformedMessage,
    Phase,
    RoundConflict,
    SecAggConfig,
    abort,
)
from xdp_compute.crypto.secagg.identity import (
    NodeSigner,
    PeerVerifier,
    keys_statement,
    signature_valid,
    survivors_statement,
)
from xdp_compute.crypto.secagg.keys import NONCE_BYTES, pairwise_seed, self_mask_seed, share_aad, share_key
from xdp_compute.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    KnownSurvivors,
    MaskedInput,
    NodeKeys,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    coerce,
)
from xdp_compute.crypto.shamir import Share
from xdp_compute.errors import InvalidCiphertext, InvalidKey, InvalidSpec, ProtocolAborted


class SecAggClient:
    """One node's side of the protocol; call the four round methods in order, once each.

    Secrets (X25519 keys, b_u, shares) come from the OS CSPRNG and never leave the object
    except as encrypted shares or as the unmasking shares the rules allow. ``unmask`` never
    reveals both the b-share and the s_sk-share of the same peer, and answers at most one
    survivor set, the one it signed in Round 3.

    ``signer``/``verifier``: this node's certified identity and the deployment CA (see the module
    notes); a client with a verifier accepts only certified, signed peers.
    """

    def __init__(self, node_id: str, config: SecAggConfig, *, signer: NodeSigner | None = None,
                 verifier: PeerVerifier | None = None) -> None:
        config.index(node_id)
        self.node_id = node_id
        self.config = config
        self._signer, self._verifier = signer, verifier
        #: Who each roster entry is, by its verified certificate (after Round 1; empty unauthenticated).
        self.peer_identities: dict[str, NodeIdentity] = {}
        self._signed_u3: frozenset[str] | None = None
        self._statement = b""  # survivors_statement of the signed U3, built once
        self._signed_order: tuple[str, ...] | None = None  # U3 as listed when it was signed
        self._u3_wire: KnownSurvivors | None = None  # and its bytes, when it came as bytes
        self._phase = Phase.ADVERTISE_KEYS
        self._c_sk: X25519PrivateKey | None = None
        self._s_sk: X25519PrivateKey | None = None
        self._keys: NodeKeys | None = None
        self._roster: dict[str, NodeKeys] = {}
        self._share_keys: dict[str, bytes] = {}  # c_{u,v} is symmetric: reused to decrypt in Round 2
        self._b: bytes = b""
        self._own_shares: tuple[Share, Share] | None = None  # (s_sk share, b share) held by self
        self._peer_shares: dict[str, tuple[Share, Share]] = {}
        self._mask: U64Vector | None = None
        self._mask_peers: frozenset[str] = frozenset()
        self._u2_peers: frozenset[str] = frozenset()
        self._answered: tuple[frozenset[str], UnmaskResponse] | None = None

    @property
    def phase(self) -> Phase:
        """The next round this client expects to run."""
        return self._phase

    def _expect(self, phase: Phase) -> None:
        if self._phase is Phase.ABORTED:
            raise RoundConflict(f"client {self.node_id} has aborted this session")
        if self._phase is not phase:
            raise RoundConflict(f"client {self.node_id} is in phase {self._phase.label}, not {phase.label}")

    def _fail(self, phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
        self._phase = Phase.ABORTED
        return abort(phase, detail, node=self.node_id, **extra)

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self.config.session_id:
            raise MalformedMessage("message belongs to another secure-aggregation session")

    # Round 0 ------------------------------------------------------------------------------

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0 (AdvertiseKeys): generate (c_pk, c_sk) and (s_pk, s_sk); send both public keys."""
        self._expect(Phase.ADVERTISE_KEYS)
        self._c_sk, self._s_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        c_pk = self._c_sk.public_key().public_bytes_raw()
        s_pk = self._s_sk.public_key().public_bytes_raw()
        certificate = signature = b""
        if self._signer is not None:
            # Active variant, Round 0: sigma_u = SIG.sign(d_u^SK, c_u^PK || s_u^PK).
            certificate = self._signer.certificate
            signature = self._signer.sign(keys_statement(self.config.session_id, self.node_id, c_pk, s_pk))
        self._keys = NodeKeys(c_pk, s_pk, certificate, signature)
        self._phase = Phase.SHARE_KEYS
        return AdvertiseKeys(self.config.session_id, self.node_id, c_pk, s_pk, certificate, signature)

    # Round 1 ------------------------------------------------------------------------------

    def share_keys(self, roster: KeyRoster | bytes) -> ShareKeys:
        """Round 1 (ShareKeys): draw b_u, Shamir-share s_sk and b_u among H(u) in U1, encrypt each share.

        Aborts when fewer than t holders advertised keys (paper: "assert |U1| >= t") or when
        the roster's public keys are not pairwise distinct.
        """
        self._expect(Phase.SHARE_KEYS)
        r = coerce(roster, KeyRoster, "KeyRoster")
        self._check_session(r.session_id)
        cfg, me = self.config, self.node_id
        assert self._keys is not None and self._c_sk is not None and self._s_sk is not None
        holders = cfg.holders_of(me)
        for node, keys in r.keys.items():
            cfg.index(node)
            check_key("KeyRoster", keys.c_pk, "c_pk")
            check_key("KeyRoster", keys.s_pk, "s_pk")
        if r.keys.get(me) != self._keys:
            raise MalformedMessage(f"KeyRoster does not list {me} with the keys it advertised")
        roster_here = {v: r.keys[v] for v in holders if v in r.keys}
        self._authenticate(roster_here)
        all_pks = [pk for keys in roster_here.values() for pk in (keys.c_pk, keys.s_pk)]
        if len(set(all_pks)) != len(all_pks):
            raise self._fail(Phase.SHARE_KEYS, "public keys in the roster are not all distinct")
        if len(roster_here) < cfg.t:
            raise self._fail(
                Phase.SHARE_KEYS,
                f"{len(roster_here)} of {len(holders)} share holders advertised keys, threshold is {cfg.t}",
                survivors=len(roster_here),
                threshold=cfg.t,
            )
        self._roster = roster_here
        self._b = secrets.token_bytes(prg.SEED_BYTES)
        order = sorted(roster_here, key=cfg.index)
        xs = [cfg.share_x(me, v) for v in order]
        # Both secrets in one pass (each lane of each its own random polynomial, ``shamir``).
        sk_shares, b_shares = shamir.split_secrets([self._s_sk.private_bytes_raw(), self._b], cfg.t, xs)
        cts: dict[str, bytes] = {}
        for v, sk_sh, b_sh in zip(order, sk_shares, b_shares, strict=True):
            if v == me:
                self._own_shares = (sk_sh, b_sh)
                continue
            key = self._share_keys[v] = share_key(cfg, self._c_sk, me, v, roster_here[v].c_pk)
            nonce = secrets.token_bytes(NONCE_BYTES)
            ct = AESGCM(key).encrypt(nonce, sk_sh.encode() + b_sh.encode(), share_aad(cfg, me, v))
            cts[v] = nonce + ct
        self._phase = Phase.MASKED_INPUT
        return ShareKeys(cfg.session_id, me, cts)

    def _authenticate(self, roster: dict[str, NodeKeys]) -> None:
        """Active variant, Round 1: every roster entry is a certified node's own signed keys.

        Paper: "verify SIG.ver(d_v^PK, c_v^PK || s_v^PK, sigma_v) for every v in U1, else abort".
        Here d_v^PK is the key of v's certificate, which must chain to the deployment CA; two
        entries may not be the same certified node (one node, one seat).
        """
        if self._verifier is None:
            return
        sid, seen = self.config.session_id, {}
        identities: dict[str, NodeIdentity] = {}
        for v, keys in sorted(roster.items()):
            if not keys.certificate or not keys.signature:
                raise self._fail(Phase.SHARE_KEYS, f"roster entry {v!r} carries no certificate and signature; "
                                                   "this node accepts only certified peers")
            try:
                ident = self._verifier.identity(keys.certificate)
            except InvalidKey as exc:
                raise self._fail(Phase.SHARE_KEYS, f"roster entry {v!r}: {exc.detail}") from None
            if not signature_valid(keys.certificate, keys_statement(sid, v, keys.c_pk, keys.s_pk), keys.signature):
                raise self._fail(Phase.SHARE_KEYS, f"the keys listed for {v!r} are not signed by its certified "
                                                   "identity (substituted keys?)")
            if ident.node in seen:
                raise self._fail(Phase.SHARE_KEYS, f"roster entries {seen[ident.node]!r} and {v!r} are the same "
                                                   f"certified node {ident.node!r}")
            seen[ident.node] = v
            identities[v] = ident
        self.peer_identities = identities

    # Round 2 ------------------------------------------------------------------------------

    def _mask_terms(self, peers: Iterable[str], *, negate: bool = False) -> list[prg.MaskTerm]:
        assert self._s_sk is not None
        cfg, me = self.config, self.node_id
        flip = -1 if negate else 1
        return [
            (pairwise_seed(cfg, self._s_sk, me, v, self._roster[v].s_pk), flip * cfg.mask_sign(me, v))
            for v in sorted(peers, key=cfg.index)
        ]

    def precompute_mask(self) -> None:
        """Optional, after ``share_keys``: compute PRG(b_u) + sum Delta PRG(s_uv) over U1 peers now.

        The mask does not depend on the input, so a node can build it while its data are still
        being computed; ``masked_input`` then only adds (and corrects for peers that left
        between Round 1 and Round 2).
        """
        self._expect(Phase.MASKED_INPUT)
        if self._mask is not None:
            return
        cfg, me = self.config, self.node_id
        peers = frozenset(self._roster) - {me}
        terms = [(self_mask_seed(cfg, me, self._b), 1), *self._mask_terms(peers)]
        self._mask = prg.combined_mask(terms, cfg.vector_length)
        self._mask_peers = peers

    def masked_input(self, x: npt.ArrayLike, shares: EncryptedShares | bytes) -> MaskedInput:
        """Round 2 (MaskedInputCollection): store peers' shares, send y = x + PRG(b_u) + sum_v Delta PRG(s_uv).

        ``x`` is a length-m uint64 vector (see :mod:`xdp_compute.crypto.fixedpoint`). The pairwise
        masks are taken with exactly the senders of ``shares`` (U2 peers). Aborts when fewer
        than t holders (self included) are left.
        """
        self._expect(Phase.MASKED_INPUT)
        cfg, me = self.config, self.node_id
        vec = np.asarray(x)
        if vec.dtype != np.uint64 or vec.shape != (cfg.vector_length,):
            raise InvalidSpec(
                f"input must be a uint64 vector of length {cfg.vector_length}, got {vec.dtype} {vec.shape}"
            )
        es = coerce(shares, EncryptedShares, "EncryptedShares")
        self._check_session(es.session_id)
        if es.recipient != me:
            raise MalformedMessage(f"EncryptedShares are addressed to {es.recipient!r}, not {me!r}")
        assert self._c_sk is not None
        received: dict[str, tuple[Share, Share]] = {}
        for v, blob in es.ciphertexts.items():
            if v == me or v not in self._roster:
                raise MalformedMessage(f"EncryptedShares: {v!r} is not a share-exchanging peer of {me}")
            key = self._share_keys[v]
            try:
                pt = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], share_aad(cfg, v, me))
            except InvalidTag:
                raise InvalidCiphertext(f"share ciphertext from {v!r} does not authenticate") from None
            try:
                sk_sh = Share.decode(pt[: shamir.SHARE_BYTES])
                b_sh = Share.decode(pt[shamir.SHARE_BYTES :])
            except shamir.InvalidShare as exc:
                raise MalformedMessage(f"share from {v!r}: {exc.detail}") from None
            if sk_sh.x != cfg.share_x(v, me) or b_sh.x != cfg.share_x(v, me):
                raise MalformedMessage(f"share from {v!r} is not for {me}'s x-coordinate")
            received[v] = (sk_sh, b_sh)
        alive = len(received) + 1
        if alive < cfg.t:
            # Paper, Round 2: "if the list of ciphertexts contains < t-1 elements, abort".
            raise self._fail(
                Phase.MASKED_INPUT,
                f"{alive} share holders left, threshold is {cfg.t}",
                survivors=alive,
                threshold=cfg.t,
            )
        peers = frozenset(received)
        if self._mask is not None:
            gone = self._mask_peers - peers
            mask = self._mask
            if gone:
                mask = mask + prg.combined_mask(self._mask_terms(gone, negate=True), cfg.vector_length)
        else:
            terms = [(self_mask_seed(cfg, me, self._b), 1), *self._mask_terms(peers)]
            mask = prg.combined_mask(terms, cfg.vector_length)
        y = np.add(vec, mask, out=mask)
        self._peer_shares = received
        self._u2_peers = peers
        # y is out: keep no copy of the mask nor the secrets behind it, only the shares Round 4 needs.
        self._share_keys = {}
        self._mask = None
        self._b = b""
        self._c_sk = self._s_sk = None
        self._phase = Phase.CONSISTENCY
        return MaskedInput(cfg.session_id, me, y)

    # Round 3 ------------------------------------------------------------------------------

    def consistency_check(self, request: ConsistencyCheck | bytes) -> ConsistencySignature:
        """Round 3 (ConsistencyCheck): check U3 and sign it; a client signs one survivor set only.

        Refuses (ProtocolAborted) when |U3| < t, when fewer than t of this node's holders
        survived, when U3 is disconnected in the neighbour graph, or when this node is not in
        U3; MalformedMessage when U3 lists a neighbour that never sent this node its shares.
        A repeated call with the same U3 signs again (the same statement); another U3 is refused.

        The node reads and signs the whole U3, not only its neighbourhood's part: a part sent
        with a digest of the set cannot be checked against that digest by the node, so a gateway
        could pair one digest with parts of two different sets; signing the set itself binds every
        honest signer to one U3 (``tests/crypto/test_secagg_scale.py``). Reading U3 is a byte
        scan; the checks on it are O(k), connectivity O(|U3| log n) from ring gaps
        (:meth:`SecAggConfig.is_connected`).
        """
        cfg, me = self.config, self.node_id
        known: KnownSurvivors | None = None
        if isinstance(request, (bytes, bytearray, memoryview)):
            req, known = ConsistencyCheck.decode_keeping_survivors(bytes(request))
        else:
            req = coerce(request, ConsistencyCheck, "ConsistencyCheck")
        self._check_session(req.session_id)
        u3 = self._check_survivors(req.survivors)
        if self._signed_u3 is not None:
            if self._signed_u3 != u3:
                raise RoundConflict(f"client {me} already signed a different survivor set")
        else:
            self._expect(Phase.CONSISTENCY)
            if me not in u3:
                raise self._fail(Phase.CONSISTENCY, f"{me} is not among the survivors; it reveals nothing")
            if len(u3) < cfg.t:
                raise self._fail(Phase.CONSISTENCY, f"{len(u3)} survivors, threshold is {cfg.t}",
                                 survivors=len(u3), threshold=cfg.t)
            for v in cfg.neighbours_of(me) & u3:
                if v not in self._u2_peers:
                    raise MalformedMessage(f"survivor {v!r} never sent {me} its shares, so it cannot be in U3")
            local = len(cfg.holders_of(me) & u3)
            if local < cfg.t:
                raise self._fail(Phase.CONSISTENCY, f"{local} of {me}'s share holders survived, threshold is {cfg.t}",
                                 survivors=local, threshold=cfg.t)
            if cfg.sparse and not cfg.is_connected(u3):
                raise self._fail(Phase.CONSISTENCY, "survivors are disconnected in the neighbour graph; the server "
                                                    "would learn partial sums")
            self._signed_u3, self._signed_order = u3, tuple(req.survivors)
            if known is not None:
                self._u3_wire = (known[0], self._signed_order)
            self._phase = Phase.UNMASK
            if self._signer is not None or self._verifier is not None:
                self._statement = survivors_statement(cfg.session_id, u3)
        # Active variant, Round 3: sigma'_u = SIG.sign(d_u^SK, U3).
        signature = b"" if self._signer is None else self._signer.sign(self._statement)
        return ConsistencySignature(cfg.session_id, me, signature)

    def _check_survivors(self, survivors: Sequence[str]) -> frozenset[str]:
        for v in survivors:
            self.config.index(v)
        u3 = frozenset(survivors)
        if len(u3) != len(survivors):
            raise MalformedMessage("duplicate survivor")
        return u3

    # Round 4 ------------------------------------------------------------------------------

    def _count_signatures(self, u3: frozenset[str], signatures: dict[str, bytes]) -> int:
        """Active variant, Round 4: how many of this node's share holders validly signed U3.

        Paper: "receive {v, sigma'_v} for v in U4, assert U4 subset of U3, |U4| >= t, and verify
        every signature, else abort". A signer outside U3, or a signature that does not verify,
        aborts. Signers outside this node's roster (SecAgg+ neighbourhoods) cannot be checked here
        and do not count.
        """
        cfg, me = self.config, self.node_id
        outside = sorted(set(signatures) - u3)
        if outside:
            raise self._fail(Phase.UNMASK, f"{outside[0]!r} signed the survivor set but is not in it")
        counted = 0
        statement = self._statement if u3 == self._signed_u3 else survivors_statement(cfg.session_id, u3)
        for v, sig in sorted(signatures.items()):
            if v not in cfg.holders_of(me):
                continue
            if self._verifier is not None:
                keys = self._roster.get(v) if v != me else self._keys
                if keys is None or not signature_valid(keys.certificate, statement, sig):
                    raise self._fail(Phase.UNMASK, f"the signature of {v!r} over the survivor set does not verify "
                                                   "(survivor sets differ between nodes?)")
            counted += 1
        return counted

    def unmask(self, request: UnmaskRequest | bytes) -> UnmaskResponse:
        """Round 4 (Unmasking): reveal b-shares of survivors (U3) and s_sk-shares of U2 \\ U3 peers.

        Only for the U3 this client signed in Round 3, and only once at least t of its share
        holders' signatures over that same U3 verify (with a verifier; without one, t signers
        must be listed). A repeated call with the same request returns the same answer; so the
        server can never obtain both kinds of share for one peer.
        """
        cfg, me = self.config, self.node_id
        if isinstance(request, (bytes, bytearray, memoryview)):
            # U3 comes back in the bytes this node read in Round 3: compared, not read again.
            req = UnmaskRequest.decode(bytes(request), known_survivors=self._u3_wire)
        else:
            req = coerce(request, UnmaskRequest, "UnmaskRequest")
        self._check_session(req.session_id)
        # The set this node signed comes back in Round 4: recognise it without re-checking n names.
        u3 = self._signed_u3 if req.survivors == self._signed_order else self._check_survivors(req.survivors)
        assert u3 is not None
        if self._answered is not None:
            if self._answered[0] == u3:
                return self._answered[1]
            raise RoundConflict(f"client {me} already answered a different survivor set")
        self._expect(Phase.UNMASK)
        if u3 != self._signed_u3:
            raise self._fail(Phase.UNMASK, "the unmasking request names another survivor set than the one this node "
                                           "signed")
        valid = self._count_signatures(u3, dict(req.signatures))
        if valid < cfg.t:
            raise self._fail(Phase.UNMASK, f"{valid} of {me}'s share holders signed the survivor set, threshold is "
                                           f"{cfg.t}", survivors=valid, threshold=cfg.t)
        held = self._u2_peers | {me}
        assert self._own_shares is not None
        all_shares = {**self._peer_shares, me: self._own_shares}
        b_out = {v: all_shares[v][1] for v in held if v in u3}
        sk_out = {v: all_shares[v][0] for v in held if v not in u3}
        resp = UnmaskResponse(cfg.session_id, me, b_out, sk_out)
        self._answered = (u3, resp)
        self._peer_shares = {}
        self._phase = Phase.DONE
        return resp
