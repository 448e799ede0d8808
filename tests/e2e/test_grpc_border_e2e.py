"""The gateway's gRPC border against a raw client (issue #12 item 7): odd numbers, no leaks."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc


def test_pull_task_with_a_nan_wait_returns_at_once(tmp_path: Path) -> None:
    # max(NaN, 0.0) is NaN, so the clamp min(max(wait, 0), 30) used to let NaN through to the
    # long poll. Now any non-finite wait is no wait.
    cluster = LocalCluster(root=tmp_path)
    try:
        cluster.start_gateway()
        token = cluster.token("holder", "raw-holder")
        meta = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(cluster.grpc_addr) as channel:
            stub = pb_grpc.NodeServiceStub(channel)
            reg = stub.Register(pb.RegisterRequest(node_name="raw-node", region="CN-FJ", datasets_json="[]",
                                                   agent_version="test"), metadata=meta, timeout=30)
            for wait in (float("nan"), float("inf"), -1.0):
                t = time.monotonic()
                r = stub.PullTask(pb.PullTaskRequest(node_id=reg.node_id, session_id=reg.session_id,
                                                     wait_seconds=wait), metadata=meta, timeout=20)
                assert r.known and not r.has_task
                assert time.monotonic() - t < 15
    finally:
        cluster.close()


def test_the_reported_version_is_checked_and_shown_to_the_holder(tmp_path: Path) -> None:
    cluster = LocalCluster(root=tmp_path)
    try:
        cluster.start_gateway()
        token = cluster.token("holder", "raw-holder")
        meta = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(cluster.grpc_addr) as channel:
            stub = pb_grpc.NodeServiceStub(channel)
            for bad in ("v" * 65, "1.0\x1b[31m", "1.0\n<script>"):
                try:
                    stub.Register(pb.RegisterRequest(node_name="raw-node", region="CN-FJ", datasets_json="[]",
                                                     agent_version=bad), metadata=meta, timeout=30)
                    raise AssertionError(f"agent_version {bad!r} was accepted")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "agent_version" in (e.details() or "")
            stub.Register(pb.RegisterRequest(node_name="raw-node", region="CN-FJ", datasets_json="[]",
                                             agent_version="raw 2.0"), metadata=meta, timeout=30)
        with cluster.client(token) as holder:
            (node,) = holder.nodes()
        # Plaintext on loopback: no certificate to show.
        assert node.version == "raw 2.0" and node.certificate is None
    finally:
        cluster.close()
