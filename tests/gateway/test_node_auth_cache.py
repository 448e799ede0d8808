"""The gateway caches authenticated tokens and node ownership (issue #13); every check keeps its
meaning: a revoked or rotated token is refused on its very next call (also when another process,
like ``xdp admin revoke-token``, changed the database), an expired one too, another holder's node
id is refused, and a certificate naming another holder is refused.

A real gRPC server (grpc.aio, over mutual TLS where the certificate matters) runs the gateway's
``NodeService`` on loopback; revocations go through a second ``Store`` on the same database file,
as the admin CLI's would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from xdp_compute.errors import Unauthorized
from xdp_compute.gateway.grpc_service import NodeService, build_server
from xdp_compute.gateway.hub import TaskHub
from xdp_compute.gateway.store import Store
from xdp_compute.gateway.tls import grpc_server_credentials
from xdp_compute.gateway.tokens import revoke_token, rotate_token
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc


def other_process(db: str) -> Store:
    """The admin CLI's view: its own Store (engine, caches) on the gateway's database."""
    return Store.open(db)


def run_node_service(store: Store, body: Callable[[str, Any], Awaitable[None]],
                     tls: tuple[Path, Path, Path] | None = None) -> None:
    """Serve ``NodeService`` on a loopback port and run ``body(address, server)``."""

    async def main() -> None:
        server = build_server(NodeService(store, TaskHub(), 2.0), 1 << 20)
        if tls is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(*tls))
        await server.start()
        try:
            await body(f"127.0.0.1:{port}", server)
        finally:
            await server.stop(None)

    asyncio.run(main())


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def register(stub: Any, token: str, name: str) -> pb.RegisterResponse:
    return await stub.Register(pb.RegisterRequest(node_name=name, region="CN-FJ", datasets_json="[]"),
                               metadata=auth(token), timeout=10)


async def pull(stub: Any, token: str, reg: pb.RegisterResponse) -> pb.PullTaskResponse:
    return await stub.PullTask(pb.PullTaskRequest(node_id=reg.node_id, session_id=reg.session_id, wait_seconds=0),
                               metadata=auth(token), timeout=10)


async def refused(call: Awaitable[Any], code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code and text in (e.value.details() or ""), (e.value.code(), e.value.details())


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gw.db'}"


def test_a_revoked_holder_token_is_refused_on_its_next_node_call(db: str) -> None:
    store = Store.open(db)
    tok = store.create_principal("holder", "h1", "CN-FJ")

    async def body(addr: str, _: Any) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            reg = await register(stub, tok, "n1")
            for _ in range(3):  # warm: the token and the node's holder are now cached
                assert (await pull(stub, tok, reg)).known
            assert store.cached_principal(tok) is not None
            admin = other_process(db)
            assert revoke_token(admin, "h1")
            admin.close()
            await refused(pull(stub, tok, reg), grpc.StatusCode.UNAUTHENTICATED, "revoked")
            await refused(stub.Heartbeat(pb.HeartbeatRequest(node_id=reg.node_id, session_id=reg.session_id),
                                         metadata=auth(tok), timeout=10),
                          grpc.StatusCode.UNAUTHENTICATED, "revoked")
            await refused(register(stub, tok, "n1"), grpc.StatusCode.UNAUTHENTICATED, "revoked")

    try:
        run_node_service(store, body)
    finally:
        store.close()


def test_rotation_in_another_process_refuses_the_old_secret_at_once(db: str) -> None:
    store = Store.open(db)
    old = store.create_principal("holder", "h1", "CN-FJ")

    async def body(addr: str, _: Any) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            reg = await register(stub, old, "n1")
            assert (await pull(stub, old, reg)).known
            admin = other_process(db)
            new = rotate_token(admin, "h1")
            admin.close()
            await refused(pull(stub, old, reg), grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            assert (await pull(stub, new, reg)).known  # same principal: it still owns its node

    try:
        run_node_service(store, body)
    finally:
        store.close()


def test_another_holders_node_id_is_refused_with_ownership_cached(db: str) -> None:
    store = Store.open(db)
    a = store.create_principal("holder", "ha", "CN-FJ")
    b = store.create_principal("holder", "hb", "CN-FJ")

    async def body(addr: str, _: Any) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            ra = await register(stub, a, "na")
            rb = await register(stub, b, "nb")
            for _ in range(2):  # both tokens and both nodes' holders cached
                assert (await pull(stub, a, ra)).known and (await pull(stub, b, rb)).known
            # B names A's node (with A's session id, even): every node call is refused.
            await refused(pull(stub, b, ra), grpc.StatusCode.UNAUTHENTICATED, "does not own")
            await refused(stub.SubmitResult(pb.TaskResult(node_id=ra.node_id, session_id=ra.session_id,
                                                          task_id="x", ok=True), metadata=auth(b), timeout=10),
                          grpc.StatusCode.UNAUTHENTICATED, "does not own")
            await refused(stub.Heartbeat(pb.HeartbeatRequest(node_id=ra.node_id, session_id=ra.session_id),
                                         metadata=auth(b), timeout=10),
                          grpc.StatusCode.UNAUTHENTICATED, "does not own")
            # A node id nobody registered is refused too (and not remembered).
            fake = pb.RegisterResponse(node_id="0" * 32, session_id=rb.session_id)
            await refused(pull(stub, b, fake), grpc.StatusCode.UNAUTHENTICATED, "does not own")
            assert store.owns_node_cached(store.authenticate(b), "0" * 32) is None

    try:
        run_node_service(store, body)
    finally:
        store.close()


def test_a_certificate_naming_another_holder_is_refused_after_the_token_is_cached(db: str, tmp_path: Path) -> None:
    from xdp_compute.crypto.pki import init_pki, issue_node_certificate

    paths = init_pki(tmp_path / "pki")
    store = Store.open(db)
    a = store.create_principal("holder", "ha", "CN-FJ")
    store.create_principal("holder", "hb", "CN-FJ")
    ca = paths.ca_cert.read_bytes()

    def channel(node: str, holder: str) -> grpc.aio.Channel:
        cert, key = issue_node_certificate(tmp_path / "pki", node, holder)
        creds = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
        return grpc.aio.secure_channel(addr_box[0], creds)

    addr_box: list[str] = []

    async def body(addr: str, _: Any) -> None:
        addr_box.append(addr)
        async with channel("na", "ha") as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            reg = await register(stub, a, "na")
            for _ in range(2):
                assert (await pull(stub, a, reg)).known
            assert store.cached_principal(a) is not None
        # A's token, cached, with a certificate that hb's node holds: refused on every call.
        async with channel("nb", "hb") as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            await refused(pull(stub, a, reg), grpc.StatusCode.PERMISSION_DENIED, "bound to holder 'hb'")
        # A's own holder, but a certificate for another node name, on Register.
        async with channel("other", "ha") as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            await refused(register(stub, a, "na"), grpc.StatusCode.PERMISSION_DENIED, "for node 'other'")

    try:
        run_node_service(store, body, tls=(paths.gateway_cert, paths.gateway_key, paths.ca_cert))
    finally:
        store.close()


def test_the_token_cache_keeps_every_refusal_of_authenticate(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(db)
    try:
        tok = store.create_principal("analyst", "an", "CN-FJ", ttl_seconds=60)
        first = store.authenticate_cached(tok)
        assert store.cached_principal(tok) == first == store.authenticate(tok)
        with pytest.raises(Unauthorized, match="unknown"):
            store.authenticate_cached(tok + "x")
        with pytest.raises(Unauthorized, match="missing"):
            store.authenticate_cached(None)
        # Expiry is enforced from the cache, without the database.
        import xdp_compute.gateway.store as st

        real = time.time
        monkeypatch.setattr(st.time, "time", lambda: real() + 120)
        with pytest.raises(Unauthorized, match="expired"):
            store.authenticate_cached(tok)
        monkeypatch.setattr(st.time, "time", real)
        # Revocation in this process drops the cache directly; in another one, by the epoch.
        t2 = store.create_principal("analyst", "an2", "CN-FJ")
        store.authenticate_cached(t2)
        revoke_token(store, "an")
        assert store.cached_principal(t2) is None  # everything re-checked once after a revocation
        assert store.authenticate_cached(t2).name == "an2"
        with pytest.raises(Unauthorized, match="revoked"):
            store.authenticate_cached(tok)
        other = other_process(db)
        revoke_token(other, "an2")
        other.close()
        with pytest.raises(Unauthorized, match="revoked"):
            store.authenticate_cached(t2)
    finally:
        store.close()


def test_rest_answers_401_on_the_next_request_after_a_revocation_elsewhere(api: Any, store: Store) -> None:
    tok = store.create_principal("analyst", "rest-an", "CN-FJ")
    h = {"authorization": f"Bearer {tok}"}
    for _ in range(3):
        assert api.get("/v1/me", headers=h).status_code == 200
    assert store.cached_principal(tok) is not None
    admin = other_process(store.engine.url.render_as_string(hide_password=False))
    revoke_token(admin, "rest-an")
    admin.close()
    r = api.get("/v1/me", headers=h)
    assert r.status_code == 401 and "revoked" in r.text
