"""A gateway and nodes as real processes on loopback ports — used by ``xdp demo`` and the e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """Owns a temp folder, a gateway process and node processes; stops them all on ``close``."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xdp-")))
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)
    db: str | None = None  # a SQLAlchemy URL (e.g. PostgreSQL); default a SQLite file in ``root``
    # Nodes share this machine's cores: one compute thread each. Preloading torch at node start
    # makes the first training round fast; tests that never train leave it off.
    node_threads: int = 1
    preload: bool = False
    # TLS on (HTTPS + mutual-TLS gRPC, a fresh CA in ``root/pki``), or plaintext with --insecure on loopback.
    tls: bool = False
    _holders: dict[str, str] = field(default_factory=dict, repr=False)  # token -> holder principal name

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.root / 'gateway.db'}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca(self) -> Path | None:
        """The deployment CA certificate clients and nodes trust (None without TLS)."""
        return self.pki / "ca.pem" if self.tls else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """``verify=`` for an httpx client talking to this cluster's gateway."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca is not None else True

    def client(self, token: str, **kw: Any) -> Any:
        """An SDK Client for this cluster's gateway (trusting its CA when TLS is on)."""
        from xdp_compute import Client

        return Client(self.url, token, ca=str(self.ca) if self.ca else None, **kw)

    def _ensure_pki(self) -> None:
        from xdp_compute.crypto.pki import init_pki

        if not (self.pki / "ca.key").exists():
            init_pki(self.pki)

    def node_certificate(self, node: str, holder: str) -> tuple[Path, Path]:
        """Issue (or reuse) the certificate of ``node`` run by holder principal ``holder``."""
        from xdp_compute.crypto.pki import NodeIdentity, PkiPaths, issue_node_certificate, node_identity

        self._ensure_pki()
        paths = PkiPaths(self.pki)
        cert, key = paths.node_cert(node), paths.node_key(node)
        if cert.exists() and key.exists() and node_identity(cert.read_bytes()) == NodeIdentity(node, holder):
            return cert, key
        return issue_node_certificate(self.pki, node, holder)

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        with open(log, "ab") as fh:
            p = subprocess.Popen([sys.executable, "-m", "xdp_compute", *args], stdout=fh, stderr=subprocess.STDOUT,
                                 cwd=self.root, env=full_env, start_new_session=True)
        proc = Proc(name, p, log)
        self.procs[name] = proc
        return proc

    def start_gateway(self, env: dict[str, str] | None = None, timeout: float = 60) -> Proc:
        if self.tls:
            self._ensure_pki()
            transport = ["--tls-cert", str(self.pki / "gateway.pem"), "--tls-key", str(self.pki / "gateway.key"),
                         "--client-ca", str(self.pki / "ca.pem")]
        else:
            transport = ["--insecure"]
        proc = self._spawn("gateway", ["gateway", "--db", self.db_url, "--http", f"127.0.0.1:{self.http_port}",
                                       "--grpc", self.grpc_addr, *transport], env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not proc.alive():
                raise RuntimeError(f"gateway exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return proc
            time.sleep(0.2)
        raise RuntimeError(f"gateway did not become healthy:\n{proc.tail()}")

    def token(self, role: str, name: str, region: str | None = None) -> str:
        from xdp_compute.gateway.store import Store

        store = Store.open(self.db_url)
        try:
            token = store.create_principal(role, name, region or "CN-FJ")
        finally:
            store.close()
        self._holders[token] = name
        return token

    def write_node_files(self, name: str, manifest: str, files: dict[str, str | bytes]) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        for fname, content in files.items():
            (d / fname).write_bytes(content.encode() if isinstance(content, str) else content)
        (d / "node.toml").write_text(manifest)
        return d / "node.toml"

    def start_node(self, name: str, token: str, manifest: Path, env: dict[str, str] | None = None, *,
                   holder: str | None = None, cert: Path | None = None, key: Path | None = None,
                   gateway: str | None = None) -> Proc:
        """Start a node process. With TLS it presents ``cert``/``key``, by default a certificate issued
        for ``name`` and the token's holder. The token goes by environment, never on the command line."""
        defaults = {k: v for k, v in {"XDP_NODE_THREADS": str(self.node_threads),
                                      "XDP_NODE_PRELOAD": "1" if self.preload else "0"}.items()
                    if k not in self.env and k not in os.environ}
        if self.tls:
            if cert is None or key is None:
                cert, key = self.node_certificate(name, holder or self._holders.get(token, name))
            transport = ["--ca", str(self.ca), "--cert", str(cert), "--key", str(key)]
        else:
            transport = ["--insecure"]
        return self._spawn(name, ["node", "--gateway", gateway or self.grpc_addr, "--manifest", str(manifest),
                                  *transport], {**defaults, **(env or {}), "XDP_TOKEN": token})

    def wait_online(self, token: str, names: list[str], online: bool = True, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        last: Any = None
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(self.url + "/v1/nodes", headers={"authorization": f"Bearer {token}"}, timeout=5,
                              verify=self.verify)
                last = r.json()
                state = {n["name"]: n["online"] for n in last}
                if all(state.get(n) is online for n in names):
                    return
            time.sleep(0.25)
        raise RuntimeError(f"nodes {names} not {'online' if online else 'offline'} in time: {last}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc = self.procs.get(name)
        if proc is None or not proc.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)

    def close(self) -> None:
        for name in list(self.procs):
            if name != "gateway":
                self.stop(name)
        self.stop("gateway")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
