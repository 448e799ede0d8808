"""What a node does with each task kind. Everything returned is counts, masked or encrypted.

``TaskExecutor.handle`` is the node's end of the contract (``xdp_compute.contract``): it decodes
the task into its typed request, runs the kind's handler and encodes the typed reply. The
handlers are listed once, in ``TaskExecutor.handler_table``; nothing registers itself by being
imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from xdp_compute.contract import (
    REPLY_OF,
    HeQueryBegin,
    HeQueryMaskedInput,
    QueryBegin,
    Record,
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggShareKeys,
    SecAggUnmask,
    TrainBegin,
    TrainEval,
    TrainPrepare,
    Validate,
    decode_request,
    encode,
)
from xdp_compute.contract.tasks import LookupEvaluate, LookupPrepare, LookupTablePart
from xdp_compute.domain.manifest import Manifest
from xdp_compute.errors import BadRequest, XdpError
from xdp_compute.node.identity import NodeIdentity
from xdp_compute.node.outcome import TaskOutcome
from xdp_compute.node.tasks.commit import commit
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.he import HeTasks
from xdp_compute.node.tasks.join import JoinTasks
from xdp_compute.node.tasks.lookup import LookupTasks
from xdp_compute.node.tasks.query import QueryTasks
from xdp_compute.node.tasks.secagg import SecAggSessions
from xdp_compute.node.tasks.train import TrainTasks
from xdp_compute.node.tasks.validate import validate

log = logging.getLogger("xdp.node.tasks")

# (job id, typed request) -> typed reply; each handler takes the request record of its own kind.
Handler = Callable[[str, Any], Record]


class TaskExecutor:
    """Runs tasks by kind for one node; lives in the node's task worker process.

    Job-scoped state lives in the task objects: secure-aggregation sessions (shared by the
    round-0 handlers that open them and the step handlers that run them), training state
    between rounds, Paillier obfuscator pools.
    """

    def __init__(self, manifest: Manifest, identity: NodeIdentity | None = None) -> None:
        """``identity``: the node's certificate, key and CA, for authenticated secure aggregation."""
        self.node = NodeContext(manifest)
        self.secagg = SecAggSessions(identity, manifest.max_colluding_nodes)
        self.query = QueryTasks(self.node, self.secagg)
        self.he = HeTasks(self.node, self.secagg, self.query)
        self.train = TrainTasks(self.node, self.secagg)
        self.lookup = LookupTasks(self.node)  # hidden lookups (issue #17)
        self.join = JoinTasks(self.node, self.secagg, self.he)  # private joins (issue #16)
        self.handlers = self.handler_table()

    def handler_table(self) -> dict[str, Handler]:
        """Every task kind of the contract and the handler that answers it."""
        return {
            Validate.KIND: partial(validate, self.node),
            "commit": partial(commit, self.node),  # data exchange (issue #17): content commitments
            QueryBegin.KIND: self.query.begin,
            SecAggShareKeys.KIND: self.secagg.share_keys,
            SecAggMaskedInput.KIND: self.secagg.masked_input,
            SecAggConsistency.KIND: self.secagg.consistency_check,
            SecAggUnmask.KIND: self.secagg.unmask,
            HeQueryBegin.KIND: self.he.query_begin,
            HeQueryMaskedInput.KIND: self.he.masked_input,
            TrainPrepare.KIND: self.train.prepare,
            TrainBegin.KIND: self.train.begin_round,
            TrainEval.KIND: self.train.evaluate,
            LookupPrepare.KIND: self.lookup.prepare,
            LookupTablePart.KIND: self.lookup.table_part,
            LookupEvaluate.KIND: self.lookup.evaluate,
            # private joins (issue #16): the rounds of docs/private-joins.md
            "join_keys": self.join.keys,
            "join_seed": self.join.seed,
            "join_begin": self.join.begin,
            "join_double_blind": self.join.double_blind,
            "join_unpermute": self.join.unpermute,
            "join_aggregate": self.join.aggregate,
            "join_noise": self.join.add_noise,
        }

    @property
    def manifest(self) -> Manifest:
        return self.node.manifest

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @node_id.setter
    def node_id(self, value: str) -> None:
        # set by the worker before each task, once the gateway has registered this node
        self.node.node_id = value

    def close(self) -> None:
        """Stop the helper processes the tasks started (Paillier obfuscator pools) and the data steps' threads."""
        self.he.close()
        self.query.close()

    def handle(self, kind: str, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        """Decode the task, run its handler, encode the reply; a refusal is a failed outcome.

        Anything an ``XdpError`` reports (a task that breaks the contract, a plan this node's
        manifest does not allow, a protocol abort...) becomes ``TaskOutcome(ok=False)`` with its
        message. Other exceptions are bugs and propagate (the worker reports their class only).
        """
        try:
            request = decode_request(kind, header, blobs)
            handler = self.handlers.get(kind)
            if handler is None:
                raise BadRequest(f"this node has no handler for task kind {kind!r}")
            reply = handler(job_id, request)
        except XdpError as e:
            # The holder's own log says why this node refused (its own policy, a broken contract);
            # error details carry no data by convention.
            log.warning("refused %s task of job %s: %s", kind, job_id, e.detail)
            return TaskOutcome(ok=False, error=e.detail)
        if type(reply) is not REPLY_OF[kind]:
            raise TypeError(f"{kind} handler answered {type(reply).__name__}, not {REPLY_OF[kind].__name__}")
        out_header, out_blobs = encode(reply)
        return TaskOutcome(ok=True, header=out_header, blobs=out_blobs)


__all__ = ["Handler", "TaskExecutor", "TaskOutcome"]
