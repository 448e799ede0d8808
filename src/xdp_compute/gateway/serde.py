"""The one place where protobuf messages meet the gateway's own types (Flower's serde pattern)."""

from __future__ import annotations

import json
from typing import Any

from xdp_compute.errors import BadRequest
from xdp_compute.gateway.hub import Reply, Task
from xdp_compute.v1 import node_pb2 as pb


def task_to_proto(t: Task) -> pb.Task:
    return pb.Task(task_id=t.task_id, job_id=t.job_id, kind=t.kind, header_json=json.dumps(t.header),
                   blobs=t.blobs)


def reply_from_proto(r: pb.TaskResult) -> Reply:
    return Reply(ok=r.ok, header=parse_json_object(r.header_json or "{}", "header_json"), blobs=dict(r.blobs),
                 error=r.error)


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return obj


def parse_json_list(text: str, what: str) -> list[Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(obj, list):
        raise BadRequest(f"{what} must be a JSON list")
    return obj
