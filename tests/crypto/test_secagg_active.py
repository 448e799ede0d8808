"""Secure aggregation against an active gateway (Bonawitz et al. 2017, the active variant; issue #12 item 2).

Each attack is played by a server that deviates from the protocol. Where the attack works on the
unauthenticated (honest-but-curious) protocol, the test shows it recovering a node's input first,
then shows the authenticated clients aborting before anything that would help it leaves them.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xdp_compute.crypto import prg, shamir
from xdp_compute.crypto.pki import PkiPaths, init_pki, issue_node_certificate
from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    EncryptedShares,
    KeyRoster,
    NodeKeys,
    NodeSigner,
    PeerVerifier,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    UnmaskRequest,
    run_local_session,
)
from xdp_compute.crypto.secagg.identity import keys_statement, survivors_statement
from xdp_compute.crypto.secagg.keys import NONCE_BYTES, pairwise_seed, self_mask_seed, share_aad, share_key
from xdp_compute.crypto.secagg.messages import ShareKeys
from xdp_compute.errors import ProtocolAborted
from xdp_compute.node.tasks.secagg import SecAggSessions, check_parties

SECRET = np.array([111, 222, 333, 444], dtype=np.uint64)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    root = tmp_path_factory.mktemp("pki")
    paths = init_pki(root)
    for i in range(6):
        issue_node_certificate(root, f"n{i}", holder=f"holder-{i}")
    issue_node_certificate(root, "n0-twin", holder="holder-0")
    return paths


def signer(pki: PkiPaths, node: str) -> NodeSigner:
    return NodeSigner.from_pem(pki.node_cert(node).read_bytes(), pki.node_key(node).read_bytes())


def verifier(pki: PkiPaths) -> PeerVerifier:
    return PeerVerifier.from_pem(pki.ca_cert.read_bytes())


def config(n: int, t: int, session: str = "job-1/round-0") -> SecAggConfig:
    return SecAggConfig(session_id=session.encode(), participants=tuple(f"n{i}" for i in range(n)),
                        vector_length=len(SECRET), threshold=t)


# ------------------------------------------------------------------------- key substitution
def _substitution_attack(victim: SecAggClient, cfg: SecAggConfig,
                         forged: dict[str, tuple[bytes, bytes]] | None = None) -> np.ndarray:
    """A gateway that plays every peer of ``victim`` with keys it holds; returns what it unmasks.

    Round 1: the victim's roster lists the gateway's keys for its peers, so every share the
    victim encrypts is readable by the gateway. Round 2: the gateway forges the peers' shares to
    the victim. Then it rebuilds b_v and s_v^SK from the victim's own shares and strips the masks.
    """
    me = victim.node_id
    adv = victim.advertise_keys()
    fake = {v: (X25519PrivateKey.generate(), X25519PrivateKey.generate()) for v in cfg.participants if v != me}
    roster = {me: adv.keys}
    for v, (c, s) in fake.items():
        cert, sig = (forged or {}).get(v, (b"", b""))
        roster[v] = NodeKeys(c.public_key().public_bytes_raw(), s.public_key().public_bytes_raw(), cert, sig)
    shares = victim.share_keys(KeyRoster(cfg.session_id, roster).encode())
    assert isinstance(shares, ShareKeys)
    sk_shares, b_shares, cts = [], [], {}
    for v, blob in shares.ciphertexts.items():
        key = share_key(cfg, fake[v][0], v, me, adv.c_pk)
        pt = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], share_aad(cfg, me, v))
        sk_shares.append(shamir.Share.decode(pt[: shamir.SHARE_BYTES]))
        b_shares.append(shamir.Share.decode(pt[shamir.SHARE_BYTES:]))
        # A forged share from v to the victim, at the victim's x-coordinate.
        junk = shamir.split_secret(secrets.token_bytes(32), cfg.t, cfg.n, xs=[cfg.x_of(u) for u in cfg.participants])
        mine = next(sh for sh in junk if sh.x == cfg.x_of(me))
        nonce = secrets.token_bytes(NONCE_BYTES)
        back = share_key(cfg, fake[v][0], v, me, adv.c_pk)
        cts[v] = nonce + AESGCM(back).encrypt(nonce, mine.encode() + mine.encode(), share_aad(cfg, v, me))
    y = victim.masked_input(SECRET, EncryptedShares(cfg.session_id, me, cts).encode()).vector
    b_v = shamir.reconstruct_secret(b_shares, cfg.t, secret_len=prg.SEED_BYTES)
    s_sk = X25519PrivateKey.from_private_bytes(shamir.reconstruct_secret(sk_shares, cfg.t, secret_len=32))
    terms = [(self_mask_seed(cfg, me, b_v), 1)]
    terms += [(pairwise_seed(cfg, s_sk, me, v, fake[v][1].public_key().public_bytes_raw()), cfg.mask_sign(me, v))
              for v in fake]
    return np.subtract(np.asarray(y), prg.combined_mask(terms, cfg.vector_length))


def test_substituted_keys_reveal_the_input_of_an_unauthenticated_node() -> None:
    cfg = config(3, 2)
    recovered = _substitution_attack(SecAggClient("n0", cfg), cfg)
    np.testing.assert_array_equal(recovered, SECRET)  # the issue's attack: [111, 222, 333, 444]


def test_an_authenticated_node_refuses_substituted_keys_before_sharing_anything(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    victim = SecAggClient("n0", cfg, signer=signer(pki, "n0"), verifier=verifier(pki))
    with pytest.raises(ProtocolAborted, match="no certificate and signature"):
        _substitution_attack(victim, cfg)
    assert victim.phase is Phase.ABORTED


def test_real_peers_signatures_do_not_cover_substituted_keys(pki: PkiPaths) -> None:
    # The gateway keeps each peer's certificate and the signature it sent, and swaps only the keys.
    cfg = config(3, 2)
    real = {v: SecAggClient(v, cfg, signer=signer(pki, v)).advertise_keys() for v in ("n1", "n2")}
    forged = {v: (a.certificate, a.signature) for v, a in real.items()}
    victim = SecAggClient("n0", cfg, signer=signer(pki, "n0"), verifier=verifier(pki))
    with pytest.raises(ProtocolAborted, match="not signed by its certified identity"):
        _substitution_attack(victim, cfg, forged)


def test_the_gateways_own_certificate_cannot_vouch_for_keys(pki: PkiPaths) -> None:
    # The operator holds the gateway's TLS key (same CA) and offers its certificate for the fake keys.
    cfg = config(3, 2)
    gw = NodeSigner.from_pem(pki.gateway_cert.read_bytes(), pki.gateway_key.read_bytes())
    forged = {v: (gw.certificate, gw.sign(b"anything")) for v in ("n1", "n2")}
    victim = SecAggClient("n0", cfg, signer=signer(pki, "n0"), verifier=verifier(pki))
    with pytest.raises(ProtocolAborted, match="not a node certificate"):
        _substitution_attack(victim, cfg, forged)


def test_a_certificate_from_another_ca_is_refused(pki: PkiPaths, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "rogue")
    issue_node_certificate(other.root, "n1", holder="holder-1")
    cfg = config(3, 2)
    rogue = SecAggClient("n1", cfg, signer=NodeSigner.from_pem(other.node_cert("n1").read_bytes(),
                                                               other.node_key("n1").read_bytes()))
    honest = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in ("n0", "n2")}
    adv = {u: c.advertise_keys() for u, c in honest.items()} | {"n1": rogue.advertise_keys()}
    roster = KeyRoster(cfg.session_id, {u: a.keys for u, a in adv.items()})
    with pytest.raises(ProtocolAborted, match="not issued by the deployment CA"):
        honest["n0"].share_keys(roster)


def test_one_certified_node_cannot_take_two_seats(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in ("n0", "n1")}
    # n2's seat is taken by a second session client that signs with n1's certificate.
    twin = SecAggClient("n2", cfg, signer=signer(pki, "n1"))
    adv = {u: c.advertise_keys() for u, c in clients.items()} | {"n2": twin.advertise_keys()}
    with pytest.raises(ProtocolAborted, match="same certified node"):
        clients["n0"].share_keys(KeyRoster(cfg.session_id, {u: a.keys for u, a in adv.items()}))


def test_the_server_drops_a_node_whose_keys_do_not_verify(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    server = SecAggServer(cfg)
    adv = SecAggClient("n0", cfg, signer=signer(pki, "n0")).advertise_keys()
    bad = type(adv)(adv.session_id, adv.sender, adv.c_pk, adv.s_pk, adv.certificate, b"\x30\x00")
    with pytest.raises(Exception, match="does not verify"):
        server.receive("n0", bad)
    server.receive("n0", adv)  # the genuine message is still accepted


def test_authenticated_session_sums_and_tolerates_dropouts(pki: PkiPaths) -> None:
    cfg = config(5, 3)
    signers = {u: signer(pki, u) for u in cfg.participants}
    inputs = {u: np.arange(4, dtype=np.uint64) * (i + 1) for i, u in enumerate(cfg.participants)}
    drop = {"n1": Phase.MASKED_INPUT, "n4": Phase.UNMASK}
    total = run_local_session(cfg, inputs, drop=drop, signers=signers, verifier=verifier(pki))
    expected = sum((inputs[u] for u in cfg.participants if u != "n1"), start=np.zeros(4, dtype=np.uint64))
    np.testing.assert_array_equal(total, expected)


# ------------------------------------------------------------------------- consistency check
def _to_round_3(cfg: SecAggConfig, clients: dict[str, SecAggClient]) -> SecAggServer:
    server = SecAggServer(cfg)
    for u, c in clients.items():
        server.receive(u, c.advertise_keys())
    server.close_advertise_keys()
    for u, c in clients.items():
        server.receive(u, c.share_keys(server.roster_for(u)))
    server.close_share_keys()
    for u, c in clients.items():
        server.receive(u, c.masked_input(SECRET, server.shares_for(u)))
    server.close_masked_input()
    return server


def test_a_node_unmasks_only_the_survivor_set_it_signed(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
    _to_round_3(cfg, clients)
    everyone = tuple(cfg.participants)
    sigs = {u: c.consistency_check(ConsistencyCheck(cfg.session_id, everyone)).signature for u, c in clients.items()}
    # A survivor set other than the signed one (n2 "dropped"), with genuine signatures over the real one.
    other = UnmaskRequest(cfg.session_id, ("n0", "n1"), {u: sigs[u] for u in ("n0", "n1")})
    with pytest.raises(ProtocolAborted, match="another survivor set"):
        clients["n0"].unmask(other)


def test_signatures_over_another_survivor_set_are_refused(pki: PkiPaths) -> None:
    # The split attack: n0 and n1 are told n2 dropped, n2 that everyone survived. The gateway
    # forwards n2's signature (over its own view) to n0 as if it covered n0's view.
    cfg = config(3, 2)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
    _to_round_3(cfg, clients)
    partial, whole = ("n0", "n1"), tuple(cfg.participants)
    s0 = clients["n0"].consistency_check(ConsistencyCheck(cfg.session_id, partial)).signature
    s2 = clients["n2"].consistency_check(ConsistencyCheck(cfg.session_id, whole)).signature
    assert s0 and s2
    forged = UnmaskRequest(cfg.session_id, partial, {"n0": s0, "n1": s2})
    with pytest.raises(ProtocolAborted, match="does not verify"):
        clients["n0"].unmask(forged)
    # An unauthenticated node cannot tell: it counts two listed signers and reveals.
    plain = {u: SecAggClient(u, cfg) for u in cfg.participants}
    _to_round_3(cfg, plain)
    plain["n0"].consistency_check(ConsistencyCheck(cfg.session_id, partial))
    resp = plain["n0"].unmask(UnmaskRequest(cfg.session_id, partial, {"n0": b"", "n1": b""}))
    assert "n2" in resp.secret_key_shares  # n2's key share: with b-shares from n2's side, n2's input


def test_too_few_signatures_reveal_nothing(pki: PkiPaths) -> None:
    cfg = config(5, 3)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
    _to_round_3(cfg, clients)
    everyone = tuple(cfg.participants)
    sigs = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, everyone)).signature for u in ("n0", "n1")}
    with pytest.raises(ProtocolAborted, match="2 of n0's share holders signed"):
        clients["n0"].unmask(UnmaskRequest(cfg.session_id, everyone, sigs))


def test_a_signer_outside_the_survivor_set_aborts(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
    _to_round_3(cfg, clients)
    partial = ("n0", "n1")
    sigs = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, partial)).signature for u in partial}
    statement = survivors_statement(cfg.session_id, partial)
    sigs["n2"] = signer(pki, "n2").sign(statement)
    with pytest.raises(ProtocolAborted, match="not in it"):
        clients["n0"].unmask(UnmaskRequest(cfg.session_id, partial, sigs))


def test_a_node_signs_one_survivor_set_only(pki: PkiPaths) -> None:
    cfg = config(3, 2)
    clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
    _to_round_3(cfg, clients)
    clients["n0"].consistency_check(ConsistencyCheck(cfg.session_id, tuple(cfg.participants)))
    with pytest.raises(Exception, match="already signed a different survivor set"):
        clients["n0"].consistency_check(ConsistencyCheck(cfg.session_id, ("n0", "n1")))


def test_statements_are_bound_to_session_and_sender() -> None:
    a = keys_statement(b"s1", "n0", b"a" * 32, b"b" * 32)
    assert a != keys_statement(b"s2", "n0", b"a" * 32, b"b" * 32)
    assert a != keys_statement(b"s1", "n1", b"a" * 32, b"b" * 32)
    assert survivors_statement(b"s", ["n1", "n0"]) == survivors_statement(b"s", ["n0", "n1"])
    assert survivors_statement(b"s", ["n0"]) != survivors_statement(b"s", ["n0", "n1"])


# ------------------------------------------------------------------------- the node's checks
def _session(n: int, t: int) -> object:
    from xdp_compute.contract import SecAggSession

    return SecAggSession(session_id="job/1", participants=[f"n{i}" for i in range(n)], vector_length=4, threshold=t)


@pytest.mark.parametrize(("n", "t", "colluding", "ok"), [
    (3, 2, None, True), (3, 1, None, False), (5, 2, None, False), (5, 3, None, True),
    (5, 3, 1, False), (5, 4, 1, True), (4, 2, None, False), (4, 3, None, True),
])
def test_the_node_requires_a_majority_threshold_beyond_its_collusion_margin(
        n: int, t: int, colluding: int | None, ok: bool) -> None:
    sessions = SecAggSessions(max_colluding_nodes=colluding)
    if ok:
        assert sessions.config_for("n0", _session(n, t)).t == t  # type: ignore[arg-type]
    else:
        with pytest.raises(Exception, match="too low|threshold must be in"):
            sessions.config_for("n0", _session(n, t))  # type: ignore[arg-type]


def test_split_survivor_sets_with_one_colluder_below_the_nodes_bound(pki: PkiPaths) -> None:
    """Why 2t > n + c: at n = 5, t = 3 a gateway with one colluding node unmasks an honest node's
    input even though every signature is genuine; the node's own rule refuses t = 3 when its
    manifest tolerates one colluder (previous test), and at t = 4 the same split lacks signers."""
    for t, leaks in ((3, True), (4, False)):
        cfg = config(5, t)
        clients = {u: SecAggClient(u, cfg, signer=signer(pki, u), verifier=verifier(pki)) for u in cfg.participants}
        _to_round_3(cfg, clients)
        victim, colluder = "n0", "n1"
        whole = tuple(cfg.participants)
        without = tuple(u for u in whole if u != victim)
        # Group A (victim's view: everyone survived) reveals b-shares of the victim; group B (told
        # the victim dropped) reveals key shares of it; the colluder signs both and gives both.
        group_a, group_b = ("n0", "n2"), ("n3", "n4")
        held = dict(clients[colluder]._peer_shares)
        sig_a = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, whole)).signature for u in group_a}
        sig_b = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, without)).signature for u in group_b}
        sig_a[colluder] = signer(pki, colluder).sign(survivors_statement(cfg.session_id, whole))
        sig_b[colluder] = signer(pki, colluder).sign(survivors_statement(cfg.session_id, without))
        b_shares, sk_shares = [held[victim][1]], [held[victim][0]]
        try:
            for u in group_a:
                b_shares.append(clients[u].unmask(UnmaskRequest(cfg.session_id, whole, sig_a)).self_mask_shares[victim])
            for u in group_b:
                sk_shares.append(clients[u].unmask(UnmaskRequest(cfg.session_id, without, sig_b))
                                 .secret_key_shares[victim])
        except ProtocolAborted:
            assert not leaks, f"t={t}: the honest nodes refused"
            continue
        assert leaks, f"t={t}: the split got {len(b_shares)} b-shares and {len(sk_shares)} key shares"
        assert len(b_shares) >= t and len(sk_shares) >= t  # both of the victim's secrets rebuild


def test_certified_holders_must_group_the_roster_as_the_noise_parties() -> None:
    check_parties({"a": "h1", "b": "h2", "c": "h3"}, {"a": "hospital", "b": "bank", "c": "insurer"})
    # One holder's two nodes declared as two parties: the noise assumed more honest shares.
    with pytest.raises(ProtocolAborted, match="counted as 2 parties"):
        check_parties({"a": "h1", "b": "h2", "c": "h3"}, {"a": "hospital", "b": "hospital", "c": "bank"})
    with pytest.raises(ProtocolAborted, match="counted as 2 parties"):
        check_parties({}, {"a": "hospital", "b": "hospital"})
    with pytest.raises(ProtocolAborted, match="spans 2 holders"):
        check_parties({"a": "h1", "b": "h1"}, {"a": "hospital", "b": "bank"})
