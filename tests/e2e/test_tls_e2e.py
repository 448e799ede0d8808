"""TLS everywhere, mutual for nodes (issue #12 item 1), tried as a network attacker would.

Real gateway and node processes on loopback. Before the fix the gateway spoke plaintext only:
a relay between a node and the gateway read the holder's bearer token and the analyst's SQL, and
any process holding a token could register any node name.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from e2e_helpers import MANIFEST, Hospitals, start_hospitals, truth, visits_csv
from tls_relay import TcpRelay

from xdp_compute import Client, XdpError
from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.crypto.pki import holder_uri, init_pki, issue_node_certificate
from xdp_compute.errors import GatewayUnreachable
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS zq_marker_total FROM visits WHERE age > 37 GROUP BY clinic"
# Markers long enough that random ciphertext holds them with negligible probability (a 2-byte
# marker such as b"37" turns up about once per 64 KiB of TLS records).
SQL_MARKERS = (b"zq_marker_total", b"age > 37")


def scratch_manifest(node: str) -> str:
    # A dataset of its own, so no ownership rule of the shared dataset decides these cases.
    return MANIFEST.format(node=node, region="CN-FJ", budget=10, min_group=5, categories="[]",
                           approval="false").replace('name = "visits"', 'name = "scratch"')


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("tls"), n=3, rows=200, tls=True)
    yield h
    h.cluster.close()


def test_a_tls_gateway_refuses_plaintext_and_unverified_clients(tls: Hospitals) -> None:
    c = tls.cluster
    assert c.url.startswith("https://") and c.ca is not None
    # Plaintext HTTP to the TLS port: no answer at all (the handshake never happens).
    plain = c.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/healthz", timeout=5)
    # HTTPS without the deployment's CA: the gateway's certificate is not trusted.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(c.url + "/healthz", timeout=5)
    with pytest.raises(GatewayUnreachable, match="certificate"), Client(c.url, tls.tokens["analyst"]) as untrusting:
        untrusting.datasets()
    with Client(c.url, tls.tokens["analyst"], ca=str(c.ca)) as analyst:
        assert analyst.datasets()[0]["name"] == "visits"
    # Plaintext gRPC, and TLS gRPC without a client certificate: refused before any call is read.
    register = pb.RegisterRequest(node_name="clinic-0", region="CN-FJ", datasets_json="[]")
    meta = (("authorization", f"Bearer {tls.tokens['clinic-0']}"),)
    for channel in (grpc.insecure_channel(c.grpc_addr),
                    grpc.secure_channel(c.grpc_addr, grpc.ssl_channel_credentials(c.ca.read_bytes()))):
        with channel, pytest.raises(grpc.RpcError) as e:
            pb_grpc.NodeServiceStub(channel).Register(register, metadata=meta, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_holder_sees_its_nodes_version_and_certificate(tls: Hospitals) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from xdp_compute.crypto.pki import PkiPaths
    from xdp_compute.node.agent import AGENT_VERSION

    c = tls.cluster
    with Client(c.url, tls.tokens["clinic-0"], ca=str(c.ca)) as holder:
        (node,) = holder.nodes()  # a holder sees its own nodes only
    cert = x509.load_pem_x509_certificate(PkiPaths(c.pki).node_cert(node.name).read_bytes())
    assert node.version == AGENT_VERSION
    assert node.certificate is not None
    assert node.certificate.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert node.certificate.subject == cert.subject.rfc4514_string()
    assert node.certificate.not_after == cert.not_valid_after_utc.timestamp()
    with Client(c.url, tls.tokens["analyst"], ca=str(c.ca)) as analyst:  # not for anyone else
        seen = {n.name: n for n in analyst.nodes()}
    assert seen[node.name].version is None and seen[node.name].certificate is None


def _self_signed(d: Path, node: str, holder: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(holder_uri(holder))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    (d / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return d / "node.pem", d / "node.key"


def test_a_node_without_a_valid_certificate_is_refused(tls: Hospitals, tmp_path: Path) -> None:
    c = tls.cluster
    mallory = c.token("holder", "mallory")
    other = init_pki(tmp_path / "other-ca")
    mallory_own = c.node_certificate("mallory-node", "mallory")
    clinic0 = c.node_certificate("clinic-0", "clinic-0-holder")  # e.g. stolen with its key
    cases = {
        # name: (node name in the manifest, token, certificate and key)
        "self-signed": ("mallory-a", mallory, _self_signed(tmp_path / "ss", "mallory-a", "mallory")),
        "other-ca": ("mallory-b", mallory, issue_node_certificate(other.root, "mallory-b", "mallory")),
        "another-holders-certificate": ("clinic-0", mallory, clinic0),
        "a-stolen-token-with-own-certificate": ("mallory-node", tls.tokens["clinic-1"], mallory_own),
        "certificate-of-another-node": ("clinic-9", tls.tokens["clinic-0"], clinic0),
    }
    for case, (node, token, (cert, key)) in cases.items():
        m = c.write_node_files(f"bad-{case}", scratch_manifest(node), {"visits.csv": visits_csv(9, 20)})
        c.start_node(f"bad-{case}", token, m, cert=cert, key=key)
    deadline = time.time() + 20
    refused = {"another-holders-certificate", "a-stolen-token-with-own-certificate", "certificate-of-another-node"}
    while time.time() < deadline and any(c.procs[f"bad-{k}"].alive() for k in refused):
        time.sleep(0.25)
    # Certificates the gateway's CA did not sign never complete a handshake: no call reaches it.
    for case in ("self-signed", "other-ca"):
        assert "unreachable" in c.procs[f"bad-{case}"].tail(50), c.procs[f"bad-{case}"].tail()
    # A valid certificate that names another holder or node: refused on Register, with the reason.
    for case in refused:
        proc = c.procs[f"bad-{case}"]
        assert not proc.alive(), f"{case}: still running\n{proc.tail()}"
        assert proc.popen.returncode != 0
        assert "certificate" in proc.tail(5), proc.tail()
    assert "holder 'clinic-0-holder'" in c.procs["bad-another-holders-certificate"].tail(5)
    assert "'clinic-9'" in c.procs["bad-certificate-of-another-node"].tail(5)
    with Client(c.url, tls.tokens["admin"], ca=str(c.ca)) as admin:
        names = {n["name"] for n in admin.nodes()}
    assert names == {"clinic-0", "clinic-1", "clinic-2"}, names
    for case in ("self-signed", "other-ca"):
        c.stop(f"bad-{case}")


def _relayed_cluster(root: Path, tls_on: bool, flip_down_at: int | None = None, env: dict[str, str] | None = None
                     ) -> tuple[LocalCluster, TcpRelay, dict[str, str], dict[str, str]]:
    """A gateway and three nodes; clinic-0 dials the gateway through a relay on loopback."""
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5", **(env or {})}, tls=tls_on)
    relay = TcpRelay(("127.0.0.1", cluster.grpc_port), flip_down_at=flip_down_at).__enter__()
    cluster.start_gateway()
    tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "analyst")}
    files = {}
    for i in range(3):
        node = f"clinic-{i}"
        tokens[node] = cluster.token("holder", f"{node}-holder")
        files[node] = visits_csv(i, 200)
        m = cluster.write_node_files(node, MANIFEST.format(node=node, region="CN-FJ", budget=1000, min_group=5,
                                                           categories="[]", approval="false"),
                                     {"visits.csv": files[node]})
        if i > 0 and hasattr(Client, "invite"):  # clinic-0's holder owns `visits` and invites the others
            with cluster.client(tokens["clinic-0"]) as owner:
                owner.invite("visits", f"{node}-holder")
        cluster.start_node(node, tokens[node], m, gateway=relay.addr if i == 0 else None)
        if i == 0:
            cluster.wait_online(tokens["admin"], [node])
    return cluster, relay, tokens, files


@pytest.mark.parametrize("tls_on", [False, True], ids=["plaintext-control", "tls"])
def test_a_relay_between_node_and_gateway_reads_no_token_or_sql(tmp_path: Path, tls_on: bool) -> None:
    cluster, relay, tokens, _ = _relayed_cluster(tmp_path / "c", tls_on)
    try:
        cluster.wait_online(tokens["admin"], ["clinic-0", "clinic-1", "clinic-2"])
        with cluster.client(tokens["analyst"]) as analyst:
            r = analyst.query(SQL, epsilon=1.0)
        assert "clinic-0" in r.nodes
        seen = relay.all_bytes()
        assert len(seen) > 2000, "the relay carried the node's traffic"
        leaked = [m for m in (tokens["clinic-0"].encode(), *SQL_MARKERS) if m in seen]
        if tls_on:
            assert leaked == [], f"readable through TLS: {leaked}"
        else:  # the control: the same relay on plaintext reads the holder's token and the query
            assert tokens["clinic-0"].encode() in leaked and len(leaked) >= 2, leaked
    finally:
        cluster.close()
        relay.__exit__()


def test_a_relay_that_flips_a_byte_breaks_the_connection_and_changes_no_result(tmp_path: Path) -> None:
    # Past the handshake (a few KB): a flipped bit in the gateway's application data.
    # Short protocol rounds: a round that loses the relayed node gives up on it in 4 s, not 20.
    cluster, relay, tokens, files = _relayed_cluster(tmp_path / "c", True, flip_down_at=6000,
                                                     env={"XDP_ROUND_TIMEOUT": "4"})
    try:
        cluster.wait_online(tokens["admin"], ["clinic-1", "clinic-2"])
        deadline = time.time() + 30
        released = 0
        with cluster.client(tokens["analyst"]) as analyst:
            while time.time() < deadline and (sum(x.flipped_at is not None for x in relay.connections) < 2
                                              or released < 2):
                try:
                    r = analyst.query(SQL, epsilon=1.0)
                except XdpError:
                    continue  # an aborted round is fine: a changed one is not
                released += 1
                # Truth over the nodes that took part (a round may go on without the relayed node).
                want = truth({n: files[n] for n in r.nodes}, where=lambda row: int(row["age"]) > 37)
                for row in r.rows:
                    # A changed masked share would move a total by ~2^64 / scale: far beyond noise.
                    if row["n"] is not None:
                        assert abs(row["n"] - want[row["clinic"]]["n"]) < 60, (row, want)
        flipped = [x for x in relay.connections if x.flipped_at is not None]
        assert len(flipped) >= 2, "the relay flipped bytes in several connections"
        for x in flipped:
            if x.closed is None:
                time.sleep(5)
            assert x.closed is not None and x.closed - x.flipped_at < 5, "a connection survived a flipped byte"
    finally:
        cluster.close()
        relay.__exit__()
