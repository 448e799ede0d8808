from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("node_name", "region", "datasets_json", "agent_version")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_JSON_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    region: str
    datasets_json: str
    agent_version: str
    def __init__(self, node_name: _Optional[str] = ..., region: _Optional[str] = ..., datasets_json: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "session_id", "heartbeat_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    heartbeat_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "session_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "wait_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    wait_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "job_id", "kind", "header_json", "blobs")
    class BlobsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    kind: str
    header_json: str
    blobs: _containers.ScalarMap[str, bytes]
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., header_json: _Optional[str] = ..., blobs: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("has_task", "task", "known")
    HAS_TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    has_task: bool
    task: Task
    known: bool
    def __init__(self, has_task: _Optional[bool] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., known: _Optional[bool] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("node_id", "session_id", "task_id", "ok", "error", "header_json", "blobs")
    class BlobsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    task_id: str
    ok: bool
    error: str
    header_json: str
    blobs: _containers.ScalarMap[str, bytes]
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., header_json: _Optional[str] = ..., blobs: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class SubmitResultResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "old_size")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    old_size: int
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., old_size: _Optional[int] = ...) -> None: ...

class CheckpointOffer(_message.Message):
    __slots__ = ("add_checkpoint", "log_vkey")
    ADD_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LOG_VKEY_FIELD_NUMBER: _ClassVar[int]
    add_checkpoint: str
    log_vkey: str
    def __init__(self, add_checkpoint: _Optional[str] = ..., log_vkey: _Optional[str] = ...) -> None: ...

class CosignatureRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "witness_public_key", "checkpoint", "cosignature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WITNESS_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    witness_public_key: bytes
    checkpoint: str
    cosignature: str
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., witness_public_key: _Optional[bytes] = ..., checkpoint: _Optional[str] = ..., cosignature: _Optional[str] = ...) -> None: ...

class CosignatureResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...
