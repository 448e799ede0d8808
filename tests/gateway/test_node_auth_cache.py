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
from xdp_compute.gateway.hub import NodeDropped, Task, TaskHub
from xdp_compute.gateway.store import Store
from xdp_compute.gateway.tls import grpc_server_credentials
from xdp_compute.gateway.tokens import revoke_token, rotate_token
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc


def other_process(db: str) -> Store:
    """The admin CLI's view: its own Store (engine, caches) on the gateway's database."""
    return Store.open(db)


def run_node_service(store: Store, body: Callable[[str, Any], Awaitable[None]],
                     tls: tuple[Path, Path, Path] | None = None, hub: TaskHub | None = None) -> None:
    """Serve ``NodeService`` on a loopback port and run ``body(address, server)``."""

    async def main() -> None:
        server = build_server(NodeService(store, hub or TaskHub(), 2.0), 1 << 20)
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


# ---------------------------------------------------------------- the task channel (one stream per session)

Body = Callable[[Any, str, pb.RegisterResponse, TaskHub], Awaitable[None]]


def with_one_node(db: str, body: Body) -> None:
    """A gateway ``NodeService`` with one holder ("h1") whose node "n1" registered; run ``body(stub,
    token, registration, hub)``."""
    store, hub = Store.open(db), TaskHub()
    tok = store.create_principal("holder", "h1", "CN-FJ")

    async def run(addr: str, _: Any) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            reg = await register(stub, tok, "n1")
            hub.registered(reg.node_id)
            await body(stub, tok, reg, hub)

    try:
        run_node_service(store, run, hub=hub)
    finally:
        store.close()


async def open_channel(stub: Any, token: str, reg: pb.RegisterResponse) -> Any:
    call = stub.TaskChannel(metadata=auth(token))
    await call.write(pb.TaskResult(node_id=reg.node_id, session_id=reg.session_id))  # the opening
    return call


def ask(hub: TaskHub, reg: pb.RegisterResponse, job: str, timeout: float = 10, **header: Any) -> Any:
    return asyncio.ensure_future(hub.call(reg.node_id, Task("validate", job, header, {}), timeout))


async def answer(call: Any, reg: pb.RegisterResponse, down: pb.PullTaskResponse, header_json: str = "{}",
                 **blobs: bytes) -> None:
    await call.write(pb.TaskResult(node_id=reg.node_id, session_id=reg.session_id, task_id=down.task.task_id,
                                   ok=True, header_json=header_json, blobs=blobs))


def revoke_elsewhere(db: str) -> None:
    admin = other_process(db)
    assert revoke_token(admin, "h1")
    admin.close()


def test_the_task_channel_carries_tasks_down_and_results_up(db: str) -> None:
    async def body(stub: Any, tok: str, reg: pb.RegisterResponse, hub: TaskHub) -> None:
        call = await open_channel(stub, tok, reg)
        for i in range(3):
            asked = ask(hub, reg, f"job{i}", i=i)
            down = await asyncio.wait_for(call.read(), 10)
            assert down.known and down.has_task and down.task.kind == "validate"
            await answer(call, reg, down, f'{{"i": {i}}}', b=b"x")
            reply = await asyncio.wait_for(asked, 10)
            assert reply.ok and reply.header == {"i": i} and reply.blobs == {"b": b"x"}
        # A malformed result fails its task at once instead of at its timeout.
        asked = ask(hub, reg, "bad")
        await answer(call, reg, await asyncio.wait_for(call.read(), 10), "[1")
        reply = await asyncio.wait_for(asked, 10)
        assert not reply.ok and "malformed" in reply.error
        await call.done_writing()

    with_one_node(db, body)


def test_a_revocation_ends_an_open_task_channel_before_the_next_task(db: str) -> None:
    async def body(stub: Any, tok: str, reg: pb.RegisterResponse, hub: TaskHub) -> None:
        call = await open_channel(stub, tok, reg)
        asked = ask(hub, reg, "j1")
        down = await asyncio.wait_for(call.read(), 10)
        assert down.has_task  # the token is cached and the stream open
        revoke_elsewhere(db)
        # The result of the task in flight is not taken, and the stream ends, revoked.
        await answer(call, reg, down)
        await refused(call.read(), grpc.StatusCode.UNAUTHENTICATED, "revoked")
        with pytest.raises(NodeDropped):
            await asyncio.wait_for(asked, 10)

    with_one_node(db, body)


def test_a_revocation_while_the_channel_idles_withholds_the_next_task(db: str) -> None:
    async def body(stub: Any, tok: str, reg: pb.RegisterResponse, hub: TaskHub) -> None:
        call = await open_channel(stub, tok, reg)
        await asyncio.sleep(0.2)  # the gateway waits for a task for this node
        revoke_elsewhere(db)
        asked = ask(hub, reg, "secret-job", 2, x=1)
        await refused(call.read(), grpc.StatusCode.UNAUTHENTICATED, "revoked")  # not the task
        with pytest.raises(NodeDropped):
            await asked

    with_one_node(db, body)


def test_a_channel_for_another_holders_node_or_a_stale_session_is_refused(db: str) -> None:
    store, hub = Store.open(db), TaskHub()
    a = store.create_principal("holder", "ha", "CN-FJ")
    b = store.create_principal("holder", "hb", "CN-FJ")
    analyst = store.create_principal("analyst", "an", "CN-FJ")

    async def body(addr: str, _: Any) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.NodeServiceStub(ch)
            ra = await register(stub, a, "na")
            hub.registered(ra.node_id)
            asked = ask(hub, ra, "j", 3)
            # B, with A's node id and session id, gets no task of A's node.
            call = await open_channel(stub, b, ra)
            await refused(call.read(), grpc.StatusCode.UNAUTHENTICATED, "does not own")
            call = await open_channel(stub, analyst, ra)
            await refused(call.read(), grpc.StatusCode.PERMISSION_DENIED, "holder")
            # A itself with a session id that is not the current one: told to register again.
            stale = pb.RegisterResponse(node_id=ra.node_id, session_id="0" * 32)
            call = await open_channel(stub, a, stale)
            down = await asyncio.wait_for(call.read(), 10)
            assert not down.known and not down.has_task
            # The task is still there for A's real session.
            call = await open_channel(stub, a, ra)
            down = await asyncio.wait_for(call.read(), 10)
            assert down.known and down.has_task
            await answer(call, ra, down)
            assert (await asyncio.wait_for(asked, 10)).ok

    try:
        run_node_service(store, body, hub=hub)
    finally:
        store.close()


def test_a_broken_channel_leaves_no_waiting_pull_to_steal_the_next_task(db: str) -> None:
    async def body(stub: Any, tok: str, reg: pb.RegisterResponse, hub: TaskHub) -> None:
        for _ in range(3):  # streams that break while the gateway waits for a task
            old = await open_channel(stub, tok, reg)
            await asyncio.sleep(0.2)
            old.cancel()
        await asyncio.sleep(0.2)
        call = await open_channel(stub, tok, reg)
        await asyncio.sleep(0.2)
        asked = ask(hub, reg, "j")
        down = await asyncio.wait_for(call.read(), 10)
        assert down.has_task  # taken by the live stream, not by a pull of a broken one
        await answer(call, reg, down)
        assert (await asyncio.wait_for(asked, 10)).ok

    with_one_node(db, body)
