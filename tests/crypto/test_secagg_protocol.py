"""Bonawitz et al. 2017 secure aggregation: correctness, drop-outs, aborts, privacy of the server's view."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from xdp_compute.crypto import fixedpoint as fp
from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MalformedMessage,
    MaskedInput,
    Phase,
    RoundConflict,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    default_threshold,
    run_local_session,
)
from xdp_compute.errors import BadRequest, InvalidCiphertext, InvalidSpec, ProtocolAborted

M = 257


def _config(n: int, *, session: str = "job-1/round-0", m: int = M, t: int | None = None) -> SecAggConfig:
    return SecAggConfig(
        session_id=session, participants=[f"node-{i}" for i in range(n)], vector_length=m, threshold=t
    )


def _inputs(cfg: SecAggConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**64, cfg.vector_length, dtype=np.uint64) for u in cfg.participants}


def _expected(inputs: dict[str, np.ndarray], nodes: list[str]) -> np.ndarray:
    return fp.sum_mod(inputs[u] for u in nodes)


def _u3(cfg: SecAggConfig, drop: dict[str, Phase]) -> list[str]:
    """The nodes whose masked input is summed: all that did not drop before Round 3."""
    return [u for u in cfg.participants if u not in drop or drop[u] >= Phase.CONSISTENCY]


class Session:
    """Step-by-step driver that keeps every intermediate object for inspection."""

    def __init__(self, cfg: SecAggConfig) -> None:
        self.cfg = cfg
        self.server = SecAggServer(cfg)
        self.clients = {u: SecAggClient(u, cfg) for u in cfg.participants}

    def advertise(self, nodes: list[str] | None = None) -> None:
        for u in nodes if nodes is not None else self.cfg.participants:
            self.server.receive(u, self.clients[u].advertise_keys().encode())
        self.server.close_advertise_keys()

    def share(self, nodes: list[str] | None = None) -> dict[str, ShareKeys]:
        out = {}
        for u in nodes if nodes is not None else self.server.survivors(Phase.ADVERTISE_KEYS):
            out[u] = self.clients[u].share_keys(self.server.roster_for(u).encode())
            self.server.receive(u, out[u].encode())
        self.server.close_share_keys()
        return out

    def mask(self, inputs: dict[str, np.ndarray], nodes: list[str] | None = None) -> dict[str, MaskedInput]:
        out = {}
        for u in nodes if nodes is not None else self.server.survivors(Phase.SHARE_KEYS):
            out[u] = self.clients[u].masked_input(inputs[u], self.server.shares_for(u).encode())
            self.server.receive(u, out[u].encode())
        self.check = self.server.close_masked_input()
        return out

    def consistency(self, nodes: list[str] | None = None) -> dict[str, ConsistencySignature]:
        """Round 3: the given survivors (default all of U3) sign the ConsistencyCheck; sets ``request``."""
        out = {}
        for u in nodes if nodes is not None else self.server.survivors(Phase.MASKED_INPUT):
            out[u] = self.clients[u].consistency_check(self.check.encode())
            self.server.receive(u, out[u].encode())
        self.request = self.server.close_consistency()
        return out

    def unmask(self, nodes: list[str] | None = None) -> np.ndarray:
        for u in nodes if nodes is not None else self.server.survivors(Phase.CONSISTENCY):
            self.server.receive(u, self.clients[u].unmask(self.request.encode()).encode())
        return self.server.close_unmask()


# -- correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_exact_sum_without_dropouts(n: int) -> None:
    cfg = _config(n)
    inputs = _inputs(cfg)
    out = run_local_session(cfg, inputs)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, _expected(inputs, list(cfg.participants)))


def test_fixed_point_floats_through_secure_aggregation() -> None:
    cfg = _config(4, m=50)
    rng = np.random.default_rng(3)
    reals = {u: rng.uniform(-1000, 1000, 50) for u in cfg.participants}
    fp.headroom_check(1000.0, cfg.n, 24)
    out = run_local_session(cfg, {u: fp.encode(v, 24) for u, v in reals.items()})
    np.testing.assert_allclose(fp.decode(out, 24), sum(reals.values()), atol=4 * 2**-25)


def test_precomputed_mask_gives_same_sum_even_when_a_peer_leaves() -> None:
    cfg = _config(5)
    inputs = _inputs(cfg, 9)
    s = Session(cfg)
    s.advertise()
    survivors = list(cfg.participants[:4])
    for u in survivors:
        s.server.receive(u, s.clients[u].share_keys(s.server.roster_for(u)).encode())
    # node-4 is in U1, so the others precompute a mask with it; its shares then miss the
    # deadline (not in U2), so masked_input must take that pairwise mask back out.
    late = s.clients["node-4"].share_keys(s.server.roster_for("node-4"))
    for u in survivors:
        s.clients[u].precompute_mask()
    s.server.close_share_keys()
    with pytest.raises(RoundConflict):
        s.server.receive("node-4", late)
    s.mask(inputs)
    s.consistency()
    np.testing.assert_array_equal(s.unmask(), _expected(inputs, survivors))


# -- drop-outs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phase", [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK]
)
@pytest.mark.parametrize("who", [0, 2, 4])
def test_one_dropout_at_each_phase(phase: Phase, who: int) -> None:
    cfg = _config(5)
    assert cfg.t == 3
    inputs = _inputs(cfg, who)
    drop = {f"node-{who}": phase}
    out = run_local_session(cfg, inputs, drop=drop)
    # Dropping in Round 3 or 4 only: its masked input is in U3, so it is part of the sum.
    np.testing.assert_array_equal(out, _expected(inputs, _u3(cfg, drop)))


def test_dropouts_at_every_phase_down_to_threshold() -> None:
    cfg = _config(8, t=3)
    inputs = _inputs(cfg, 5)
    drop = {
        "node-1": Phase.ADVERTISE_KEYS,
        "node-2": Phase.SHARE_KEYS,
        "node-4": Phase.MASKED_INPUT,
        "node-5": Phase.CONSISTENCY,
        "node-6": Phase.UNMASK,
    }
    out = run_local_session(cfg, inputs, drop=drop)
    assert _u3(cfg, drop) == ["node-0", "node-3", "node-5", "node-6", "node-7"]
    np.testing.assert_array_equal(out, _expected(inputs, _u3(cfg, drop)))


@pytest.mark.parametrize(
    ("phase", "label"),
    [
        (Phase.ADVERTISE_KEYS, "advertise_keys"),
        (Phase.SHARE_KEYS, "share_keys"),
        (Phase.MASKED_INPUT, "masked_input"),
        (Phase.CONSISTENCY, "consistency"),
        (Phase.UNMASK, "unmask"),
    ],
)
def test_clean_abort_below_threshold_at_each_phase(phase: Phase, label: str) -> None:
    cfg = _config(5)
    drop = {f"node-{i}": phase for i in (0, 1, 3)}  # 2 left, t = 3
    with pytest.raises(ProtocolAborted) as exc:
        run_local_session(cfg, _inputs(cfg), drop=drop)
    err = exc.value
    assert err.extra["phase"] == label
    assert err.extra["survivors"] == 2 and err.extra["threshold"] == 3
    assert label in err.detail and "2 of 5" in err.detail


def test_aborted_server_stays_aborted() -> None:
    cfg = _config(4)
    s = Session(cfg)
    with pytest.raises(ProtocolAborted) as first:
        s.advertise(["node-0", "node-1"])
    assert s.server.phase is Phase.ABORTED
    for call in (
        lambda: s.server.roster_for("node-0"),
        s.server.close_share_keys,
        lambda: s.server.receive("node-2", s.clients["node-2"].advertise_keys()),
        lambda: s.server.result,
    ):
        with pytest.raises(ProtocolAborted) as again:
            call()
        assert again.value is first.value


@pytest.mark.parametrize(("last", "label"), [(Phase.CONSISTENCY, "consistency"), (Phase.UNMASK, "unmask")])
def test_cumulative_dropouts_abort_in_the_last_rounds(last: Phase, label: str) -> None:
    cfg = _config(5)
    drop = {"node-0": Phase.ADVERTISE_KEYS, "node-1": Phase.MASKED_INPUT, "node-2": last}
    with pytest.raises(ProtocolAborted) as exc:
        run_local_session(cfg, _inputs(cfg), drop=drop)
    assert exc.value.extra["phase"] == label
    assert exc.value.extra["survivors"] == 2 and exc.value.extra["eligible"] == 3


# -- the client's consistency-check and unmasking rules ---------------------------------------


def _to_round4(n: int = 5) -> tuple[Session, dict[str, np.ndarray]]:
    cfg = _config(n)
    inputs = _inputs(cfg)
    s = Session(cfg)
    s.advertise()
    s.share()
    return s, inputs


def _request(cfg: SecAggConfig, survivors: list[str] | tuple[str, ...], signers: list[str] | tuple[str, ...]
             ) -> UnmaskRequest:
    """An unmasking request as a deviating server could send it (unauthenticated clients sign with b"")."""
    return UnmaskRequest(cfg.session_id, tuple(survivors), dict.fromkeys(signers, b""))


def test_client_refuses_to_sign_below_threshold() -> None:
    s, inputs = _to_round4()
    s.mask(inputs)
    c = s.clients["node-0"]
    with pytest.raises(ProtocolAborted, match="2 survivors, threshold is 3") as exc:
        c.consistency_check(ConsistencyCheck(s.cfg.session_id, ("node-0", "node-1")))
    assert exc.value.extra["phase"] == "consistency"
    assert exc.value.extra["survivors"] == 2 and exc.value.extra["threshold"] == 3
    assert c.phase is Phase.ABORTED
    with pytest.raises(RoundConflict):
        c.consistency_check(s.check)
    with pytest.raises(RoundConflict):
        c.unmask(_request(s.cfg, s.cfg.participants, s.cfg.participants))


def test_client_refuses_when_not_a_survivor() -> None:
    s, inputs = _to_round4()
    s.mask(inputs)
    c = s.clients["node-0"]
    with pytest.raises(ProtocolAborted, match="not among the survivors"):
        c.consistency_check(ConsistencyCheck(s.cfg.session_id, ("node-1", "node-2", "node-3", "node-4")))
    assert c.phase is Phase.ABORTED


def test_client_refuses_to_sign_when_too_few_of_its_holders_survived() -> None:
    # SecAgg+ ring of 8 (neighbourhoods of 3, t = 2): a survivor set large enough overall but
    # holding only node u itself of H(u) would let the server unmask u alone.
    cfg = SecAggConfig(session_id="job-1/round-0", participants=[f"node-{i}" for i in range(8)],
                       vector_length=M, threshold=2, neighbours=2)
    s = Session(cfg)
    s.advertise()
    s.share()
    s.mask(_inputs(cfg))
    u = "node-0"
    others = [v for v in cfg.participants if v not in cfg.holders_of(u)]
    c = s.clients[u]
    with pytest.raises(ProtocolAborted, match="share holders survived") as exc:
        c.consistency_check(ConsistencyCheck(cfg.session_id, (u, *others)))
    assert exc.value.extra["phase"] == "consistency"
    assert exc.value.extra["survivors"] == 1 and exc.value.extra["threshold"] == 2


def test_client_never_reveals_both_kinds_for_one_peer() -> None:
    s, inputs = _to_round4()
    s.mask(inputs, ["node-0", "node-1", "node-2", "node-3"])  # node-4 dropped after sharing
    s.consistency()
    c = s.clients["node-0"]
    resp = c.unmask(s.request)
    assert set(resp.self_mask_shares) == {"node-0", "node-1", "node-2", "node-3"}
    assert set(resp.secret_key_shares) == {"node-4"}
    assert c.unmask(s.request) is resp  # idempotent for the same U3
    assert c.unmask(s.request.encode()) is resp
    # A server asking again with node-4 now "alive" would get node-4's b-share too: refused.
    with pytest.raises(RoundConflict):
        c.unmask(_request(s.cfg, s.cfg.participants, s.cfg.participants))
    with pytest.raises(RoundConflict):
        c.unmask(_request(s.cfg, ["node-0", "node-1", "node-2"], ["node-0", "node-1", "node-2"]))
    # Nor does it sign another survivor set, before or after answering.
    with pytest.raises(RoundConflict):
        c.consistency_check(ConsistencyCheck(s.cfg.session_id, tuple(s.cfg.participants)))


def test_client_signs_one_survivor_set_only() -> None:
    s, inputs = _to_round4()
    s.mask(inputs, ["node-0", "node-1", "node-2", "node-3"])
    c = s.clients["node-0"]
    # Not before Round 3: a client that signed nothing reveals nothing.
    with pytest.raises(RoundConflict):
        c.unmask(_request(s.cfg, s.check.survivors, s.check.survivors))
    first = c.consistency_check(s.check)
    assert isinstance(first, ConsistencySignature) and first.sender == "node-0"
    assert c.consistency_check(s.check.encode()) == first  # the same statement again
    assert c.phase is Phase.UNMASK
    with pytest.raises(RoundConflict):
        c.consistency_check(ConsistencyCheck(s.cfg.session_id, tuple(s.cfg.participants)))
    with pytest.raises(RoundConflict):
        c.consistency_check(ConsistencyCheck(s.cfg.session_id, ("node-0", "node-1", "node-2")))


def test_client_unmasks_only_the_set_it_signed_and_with_t_signers() -> None:
    s, inputs = _to_round4()
    s.mask(inputs, ["node-0", "node-1", "node-2", "node-3"])  # node-4 dropped after sharing
    s.consistency()
    cfg, u3 = s.cfg, s.request.survivors
    assert set(s.request.signatures) == set(u3)
    # Another survivor set than the one signed (node-4 "alive"), even with every signature: refused.
    c1 = s.clients["node-1"]
    with pytest.raises(ProtocolAborted, match="another survivor set") as exc:
        c1.unmask(_request(cfg, cfg.participants, cfg.participants))
    assert exc.value.extra["phase"] == "unmask" and c1.phase is Phase.ABORTED
    # The signed set, but only t-1 = 2 signers listed: refused.
    c2 = s.clients["node-2"]
    with pytest.raises(ProtocolAborted) as exc:
        c2.unmask(_request(cfg, u3, ["node-0", "node-2"]))
    assert exc.value.extra["phase"] == "unmask"
    assert exc.value.extra["survivors"] == 2 and exc.value.extra["threshold"] == 3
    # A signer outside U3: refused.
    c3 = s.clients["node-3"]
    with pytest.raises(ProtocolAborted, match="not in it"):
        c3.unmask(_request(cfg, u3, [*u3, "node-4"]))
    # The genuine request (t = 3 signers suffice) is answered.
    resp = s.clients["node-0"].unmask(_request(cfg, u3, ["node-0", "node-1", "node-3"]))
    assert set(resp.secret_key_shares) == {"node-4"}


def test_client_rejects_survivor_that_never_shared() -> None:
    cfg = _config(5)
    s = Session(cfg)
    s.advertise()
    s.share(["node-0", "node-1", "node-2", "node-3"])
    s.mask(_inputs(cfg))
    with pytest.raises(MalformedMessage):
        s.clients["node-0"].consistency_check(ConsistencyCheck(cfg.session_id, tuple(cfg.participants)))


# -- privacy of what the server sees -----------------------------------------------------------


def _masked_vectors(cfg: SecAggConfig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seen: dict[str, np.ndarray] = {}

    def observe(node: str, raw: bytes) -> None:
        if raw[4] == MaskedInput.TYPE:
            seen[node] = MaskedInput.decode(raw).vector.copy()

    run_local_session(cfg, inputs, observe=observe)
    return seen


def test_masks_differ_across_sessions_with_same_inputs() -> None:
    cfg1, cfg2 = _config(3, session="job-1/round-0"), _config(3, session="job-1/round-1")
    inputs = _inputs(cfg1)
    y1, y2 = _masked_vectors(cfg1, inputs), _masked_vectors(cfg2, inputs)
    y1_again = _masked_vectors(cfg1, inputs)  # same session id, fresh keys: still fresh masks
    for u in cfg1.participants:
        assert not np.any(y1[u] == y2[u])
        assert not np.any(y1[u] == y1_again[u])


def test_masked_vectors_look_uniform_and_hide_inputs() -> None:
    # Worst case for leakage: all-zero inputs, so y is nothing but masks.
    m = 20_000
    cfg = _config(3, m=m)
    zeros = {u: np.zeros(m, dtype=np.uint64) for u in cfg.participants}
    ys = _masked_vectors(cfg, zeros)
    words = np.concatenate([ys[u] for u in cfg.participants])
    assert not np.any(words == 0)  # P(some word is 0) = 60000 * 2^-64
    n_words = words.size
    # Bit balance: each bit ~ Binomial(N, 1/2). |z| < 6.5 fails w.p. 8e-11 per bit, 5e-9 for 64.
    bits = np.unpackbits(words.view(np.uint8)).reshape(n_words, 64)
    z = (bits.sum(axis=0) - n_words / 2) / np.sqrt(n_words / 4)
    assert np.all(np.abs(z) < 6.5), z
    # Byte histogram: chi-square with 255 dof, threshold at tail probability 1e-8.
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = words.view(np.uint8).size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.isf(1e-8, 255), chi2
    # And the sum still unmasks to zero.
    assert not run_local_session(cfg, zeros).any()


def test_server_view_never_contains_a_plain_input() -> None:
    cfg = _config(5, m=400)
    inputs = _inputs(cfg, 11)  # full-range random words: chance collisions ~ 1e-11
    view: list[bytes] = []
    out = run_local_session(
        cfg, inputs, drop={"node-3": Phase.MASKED_INPUT}, observe=lambda node, raw: view.append(raw)
    )
    blob = b"".join(view)
    windows = {blob[i : i + 8] for i in range(len(blob) - 7)}
    for u, x in inputs.items():
        words = {x[i : i + 1].astype("<u8").tobytes() for i in range(x.size)}
        assert not (words & windows), f"{u}'s plain input appears in the server's view"
    np.testing.assert_array_equal(out, _expected(inputs, [u for u in cfg.participants if u != "node-3"]))


# -- the server's checks on what it receives ---------------------------------------------------


def test_server_rejects_wrong_sender_session_phase_and_strangers() -> None:
    cfg = _config(3)
    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in cfg.participants}
    adv = clients["node-0"].advertise_keys()
    with pytest.raises(MalformedMessage):
        server.receive("node-1", adv)  # claims node-0, came from node-1
    with pytest.raises(MalformedMessage):
        server.receive("mallory", adv)
    other = SecAggClient("node-1", _config(3, session="job-2/round-0")).advertise_keys()
    with pytest.raises(MalformedMessage):
        server.receive("node-1", other)
    server.receive("node-0", adv)
    server.receive("node-0", adv.encode())  # identical resend is fine
    with pytest.raises(RoundConflict):
        server.receive("node-0", SecAggClient("node-0", cfg).advertise_keys())
    for u in ("node-1", "node-2"):
        server.receive(u, clients[u].advertise_keys())
    assert server.expected_senders() == ()
    server.close_advertise_keys()
    assert server.phase is Phase.SHARE_KEYS
    with pytest.raises(RoundConflict):
        server.receive("node-0", adv)  # round 0 is over
    with pytest.raises(RoundConflict):
        server.close_advertise_keys()


def test_server_rejects_incomplete_share_keys_and_bad_vectors() -> None:
    cfg = _config(3)
    s = Session(cfg)
    s.advertise()
    sk = s.clients["node-0"].share_keys(s.server.roster_for("node-0"))
    partial = ShareKeys(sk.session_id, sk.sender, {"node-1": sk.ciphertexts["node-1"]})
    with pytest.raises(MalformedMessage):
        s.server.receive("node-0", partial)
    s.server.receive("node-0", sk)
    for u in ("node-1", "node-2"):
        s.server.receive(u, s.clients[u].share_keys(s.server.roster_for(u)))
    s.server.close_share_keys()
    with pytest.raises(MalformedMessage):
        s.server.receive("node-0", MaskedInput(cfg.session_id, "node-0", np.zeros(M + 1, dtype=np.uint64)))
    with pytest.raises(RoundConflict):
        s.server.receive("node-0", UnmaskResponse(cfg.session_id, "node-0", {}, {}))
    with pytest.raises(RoundConflict):
        s.server.receive("node-0", ConsistencySignature(cfg.session_id, "node-0", b""))


def test_server_round3_takes_signatures_from_u3_and_round4_answers_from_signers_only() -> None:
    s, inputs = _to_round4()
    s.mask(inputs, ["node-0", "node-1", "node-2", "node-3"])  # node-4 dropped after sharing
    sid = s.cfg.session_id
    assert isinstance(s.check, ConsistencyCheck) and s.server.phase is Phase.CONSISTENCY
    assert s.check.survivors == ("node-0", "node-1", "node-2", "node-3")
    with pytest.raises(RoundConflict):
        s.server.unmask_request()  # no request before the signatures are in
    with pytest.raises(RoundConflict):
        s.server.receive("node-4", ConsistencySignature(sid, "node-4", b""))  # not in U3
    with pytest.raises(RoundConflict):
        s.server.receive("node-0", UnmaskResponse(sid, "node-0", {}, {}))  # Round 4 not open
    s.consistency(["node-0", "node-1", "node-2"])  # node-3 sent its masked input but does not sign
    assert s.server.survivors(Phase.CONSISTENCY) == ("node-0", "node-1", "node-2")
    assert s.request.survivors == s.check.survivors  # U3, still the summed set
    assert set(s.request.signatures) == {"node-0", "node-1", "node-2"}
    assert s.server.unmask_request() == s.request
    with pytest.raises(RoundConflict):
        s.server.receive("node-3", ConsistencySignature(sid, "node-3", b""))  # Round 3 is over
    with pytest.raises(RoundConflict):
        s.server.receive("node-3", UnmaskResponse(sid, "node-3", {}, {}))  # did not sign
    np.testing.assert_array_equal(s.unmask(), _expected(inputs, ["node-0", "node-1", "node-2", "node-3"]))


def test_server_rejects_unmask_response_with_wrong_share_sets() -> None:
    s, inputs = _to_round4()
    s.mask(inputs, ["node-0", "node-1", "node-2", "node-3"])
    s.consistency()
    good = s.clients["node-0"].unmask(s.request)
    # Asking for node-4's b-share while also holding its key share: refused by the server.
    smuggled = UnmaskResponse(
        good.session_id, "node-0", {**good.self_mask_shares, "node-4": good.secret_key_shares["node-4"]}, {}
    )
    with pytest.raises(MalformedMessage):
        s.server.receive("node-0", smuggled)
    forged_x = UnmaskResponse(
        good.session_id,
        "node-0",
        dict(good.self_mask_shares),
        {"node-4": type(good.secret_key_shares["node-4"])(2, good.secret_key_shares["node-4"].y)},
    )
    with pytest.raises(MalformedMessage):
        s.server.receive("node-0", forged_x)
    s.server.receive("node-0", good)
    np.testing.assert_array_equal(
        s.unmask(["node-1", "node-2", "node-3"]), _expected(inputs, ["node-0", "node-1", "node-2", "node-3"])
    )


def test_client_detects_tampered_share_ciphertext() -> None:
    cfg = _config(3)
    s = Session(cfg)
    s.advertise()
    s.share()
    es = s.server.shares_for("node-0")
    sender, ct = next(iter(es.ciphertexts.items()))
    flipped = ct[:-1] + bytes([ct[-1] ^ 1])
    tampered = EncryptedShares(es.session_id, es.recipient, {**es.ciphertexts, sender: flipped})
    x = np.zeros(M, dtype=np.uint64)
    with pytest.raises(InvalidCiphertext):
        s.clients["node-0"].masked_input(x, tampered)
    # Shares addressed to someone else, or claimed from a stranger, are refused too.
    with pytest.raises(MalformedMessage):
        s.clients["node-0"].masked_input(x, s.server.shares_for("node-1"))
    # The client is unharmed and can proceed with the genuine message.
    s.clients["node-0"].masked_input(x, es)


def test_client_input_and_roster_validation() -> None:
    cfg = _config(3)
    s = Session(cfg)
    s.advertise()
    c = s.clients["node-0"]
    roster = s.server.roster_for("node-0")
    forged = KeyRoster(roster.session_id, {**roster.keys, "node-0": roster.keys["node-1"]})
    with pytest.raises(MalformedMessage):
        c.share_keys(forged)
    with pytest.raises(RoundConflict):
        c.masked_input(np.zeros(M, np.uint64), EncryptedShares(cfg.session_id, "node-0", {}))
    c.share_keys(roster)
    with pytest.raises(InvalidSpec):
        c.masked_input(np.zeros(M, np.int64), EncryptedShares(cfg.session_id, "node-0", {}))
    with pytest.raises(InvalidSpec):
        c.masked_input(np.zeros(M - 1, np.uint64), EncryptedShares(cfg.session_id, "node-0", {}))


def test_client_aborts_round2_with_too_few_shares() -> None:
    cfg = _config(5)
    s = Session(cfg)
    s.advertise()
    s.share()
    es = s.server.shares_for("node-0")
    few = EncryptedShares(es.session_id, es.recipient, dict(list(es.ciphertexts.items())[:1]))
    with pytest.raises(ProtocolAborted) as exc:
        s.clients["node-0"].masked_input(np.zeros(M, np.uint64), few)
    assert exc.value.extra["phase"] == "masked_input"


# -- configuration ----------------------------------------------------------------------------


def test_default_threshold_is_majority() -> None:
    assert [default_threshold(n) for n in (1, 2, 3, 4, 5, 10, 11)] == [1, 2, 2, 3, 3, 6, 6]
    assert _config(10).t == 6
    assert _config(10).guaranteed_dropout_tolerance == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"participants": ["a", "a"]},
        {"participants": []},
        {"participants": ["a", ""]},
        {"participants": "ab"},
        {"threshold": 1},
        {"threshold": 4},
        {"vector_length": 0},
        {"session_id": b""},
        {"session_id": b"x" * 300},
        {"neighbours": 3},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"session_id": "s", "participants": ["a", "b", "c"], "vector_length": 4}
    base.update(kwargs)
    with pytest.raises(InvalidSpec):
        SecAggConfig(**base)  # type: ignore[arg-type]


def test_errors_are_bad_requests_or_conflicts() -> None:
    assert issubclass(MalformedMessage, BadRequest)
    assert RoundConflict.status == 409
    assert UnmaskRequest.TYPE != UnmaskResponse.TYPE
