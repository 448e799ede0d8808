"""The node as a witness of the gateway's release log.

Every few seconds the node asks the gateway for the log's latest C2SP checkpoint with a
consistency proof from the last checkpoint it cosigned, checks it (``audit/witness.py``) and
returns its cosignature/v1. It keeps, in its own state folder:

- ``witness.key``: its Ed25519 witness key (PKCS#8 PEM, mode 0600, created on first start; a
  looser file is refused);
- ``witness.json``: the log's pinned verifier key and the last checkpoint it cosigned, written
  (atomically) before the cosignature is sent, as tlog-witness requires.

A checkpoint that shrinks the log, forks it or is signed by another key is refused and logged
as an error every time it is offered: an operator that rewrote or truncated its log cannot get
this node's cosignature again. The node also re-cosigns the unchanged latest checkpoint every
``refresh`` seconds so auditors can require fresh cosignatures (a rolled-back log gets none).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xdp_compute.audit.note import ALG_COSIGNATURE_V1, vkey
from xdp_compute.audit.witness import (
    WitnessRefusal,
    WitnessView,
    parse_add_checkpoint,
    witness_checkpoint,
    witness_name,
)
from xdp_compute.config import NodeSettings
from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.errors import InvalidKey, ProofError
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

log = logging.getLogger("xdp.node.witness")
KEY_FILE, STATE_FILE = "witness.key", "witness.json"


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        write_secret_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        return key
    loaded = serialization.load_pem_private_key(read_secret_file(path, max_bytes=4096), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InvalidKey(f"{path} is not an Ed25519 witness key")
    return loaded


class NodeWitness:
    """This node's witness key and view of the release log, and the exchange with the gateway."""

    def __init__(self, state_dir: Path, node_name: str, refresh: float | None = None) -> None:
        # XDP_WITNESS_REFRESH, validated before anything is written (InvalidSetting names it)
        self.refresh = NodeSettings().witness_refresh_seconds if refresh is None else refresh
        self.dir = Path(state_dir)
        self.name = witness_name(node_name)
        self.key = _load_or_create_key(self.dir / KEY_FILE)
        self.public_key = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)
        self.view = self._load_view()
        self._last_refusal: tuple[str, float] = ("", 0.0)
        self._pending_note = ""
        log.info("witness key %s", self.vkey)

    @property
    def vkey(self) -> str:
        """This witness's C2SP verifier key (type 0x04): what auditors pin."""
        return vkey(self.name, ALG_COSIGNATURE_V1, self.public_key)

    def _load_view(self) -> WitnessView | None:
        path = self.dir / STATE_FILE
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return WitnessView(data["log_vkey"], int(data["tree_size"]), bytes.fromhex(data["root_hash"]),
                           int(data.get("cosigned_at", 0)))

    def _save_view(self, view: WitnessView) -> None:
        path = self.dir / STATE_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"log_vkey": view.log_vkey, "tree_size": view.tree_size,
                                   "root_hash": view.root_hash.hex(), "cosigned_at": view.cosigned_at}))
        os.replace(tmp, path)
        self.view = view

    def _refuse(self, reason: str) -> None:
        # Loud, but not once per second: the same refusal is repeated at most every 30 s.
        last, when = self._last_refusal
        if reason != last or time.monotonic() - when > 30:
            log.error("RELEASE LOG WITNESS REFUSES TO COSIGN: %s. The gateway's log is not an extension of "
                      "what this node cosigned before; tell the auditors.", reason)
            self._last_refusal = (reason, time.monotonic())

    def consider(self, offer: pb.CheckpointOffer, now: int | None = None) -> str | None:
        """Check one offer; return the cosignature line to send, or None (nothing new, or refused)."""
        if not offer.add_checkpoint:
            return None
        now = int(time.time()) if now is None else now
        view = self.view
        if view is None:
            log.info("witnessing release log %s (its key pinned on first use)", offer.log_vkey.split("+")[0])
            view = WitnessView(offer.log_vkey)
        elif offer.log_vkey != view.log_vkey:
            self._refuse(f"the log now presents key {offer.log_vkey[:60]!r}, this node pinned {view.log_vkey[:60]!r}")
            return None
        try:
            request = parse_add_checkpoint(offer.add_checkpoint)
            new, line = witness_checkpoint(view, request, self.key, self.name, now)
        except WitnessRefusal as exc:
            self._refuse(exc.detail)
            return None
        except ProofError as exc:
            self._refuse(f"malformed offer: {exc.detail}")
            return None
        if self.view is not None and (new.tree_size, new.root_hash) == (view.tree_size, view.root_hash) \
                and now - view.cosigned_at < self.refresh:
            return None  # nothing new and the last cosignature is recent enough
        self._save_view(new)  # persist before the cosignature leaves (tlog-witness)
        self._pending_note = request.note
        return line.line()

    def step(self, stub: pb_grpc.NodeServiceStub, node_id: str, session_id: str,
             metadata: tuple[tuple[str, str], ...], timeout: float) -> bool:
        """One exchange with the gateway; True if a cosignature was delivered."""
        old = self.view.tree_size if self.view is not None else 0
        offer = stub.GetCheckpoint(pb.CheckpointRequest(node_id=node_id, session_id=session_id, old_size=old),
                                   metadata=metadata, timeout=timeout)
        line = self.consider(offer)
        if line is None:
            return False
        r = stub.AddCosignature(pb.CosignatureRequest(node_id=node_id, session_id=session_id,
                                                      witness_public_key=self.public_key,
                                                      checkpoint=self._pending_note, cosignature=line),
                                metadata=metadata, timeout=timeout)
        return bool(r.accepted)

    def loop(self, stub: pb_grpc.NodeServiceStub, node_id: str, session_id: str,
             metadata: tuple[tuple[str, str], ...], interval: float, stop: threading.Event,
             lost: threading.Event) -> None:
        """Witness until the session ends; RPC failures are retried at the next tick."""
        while not stop.is_set() and not lost.is_set():
            try:
                self.step(stub, node_id, session_id, metadata, timeout=max(interval * 4, 5.0))
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("this gateway does not offer its release log for witnessing")
                    return
                log.debug("witness exchange failed (%s)", code)
            except ValueError:
                return  # the channel was closed under us (reconnect or stop)
            stop.wait(interval)


def node_state_dir(manifest: Any) -> Path:
    """The node's own state folder (``manifest.state_path`` where the manifest defines one)."""
    path = getattr(manifest, "state_path", None)
    if path is not None:
        return Path(path)
    return Path(manifest.base_dir) / ".xdp" / "node" / manifest.node_name
