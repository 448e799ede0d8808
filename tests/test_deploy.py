"""Deployment (issue #14): compose.yaml, the per-role images of the Dockerfile, the one-shot
set-up script and the image's entrypoint and HEALTHCHECK, checked without a Docker daemon.

compose.yaml is parsed (with Compose's variable interpolation) and every reference in it is
checked against the Dockerfile, the repository and the other services; the Dockerfile is read
stage by stage (hadolint runs in tests/test_repo_layout.py); docker/xdp-init.sh and the gateway
image's CMD and HEALTHCHECK run here as real processes, outside Docker.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from xdp_compute.cli.cluster import free_port
from xdp_compute.config import CLIENT_VARIABLES, Settings, env_name
from xdp_compute.domain.manifest import load_manifest

ROOT = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent
ENV = {"POSTGRES_PASSWORD": "s3cret-for-tests"}


# ------------------------------------------------------------------ the Dockerfile, by stage
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in self.args("ENV"):
            for tok in shlex.split(a):
                k, _, v = tok.partition("=")
                out[k] = v
        return out


def dockerfile_stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert m, line
            current = Stage(m.group(2) or f"stage{len(stages)}", m.group(1))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((op, rest.strip()))
    return stages


def inherited(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def final_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for s in reversed(inherited(stages, name)):
        env.update(s.env())
    return env


def installs(stages: dict[str, Stage], name: str) -> str:
    """Every RUN line of the stages whose /opt/venv the target stage copies (its packages)."""
    copied = [re.search(r"--from=(\S+)", a).group(1)  # type: ignore[union-attr]
              for s in inherited(stages, name) for a in s.args("COPY") if "--from=" in a]
    return " ".join(a for c in copied for s in inherited(stages, c) for a in s.args("RUN"))


def exec_form(arg: str) -> list[str]:
    import json

    return [str(x) for x in json.loads(arg)]


def test_each_role_has_an_image_with_only_what_it_needs() -> None:
    stages = dockerfile_stages()
    assert {"gateway", "node"} <= set(stages)
    gateway, node = installs(stages, "gateway"), installs(stages, "node")
    # The gateway sums Paillier ciphertexts and never trains: no torch, no Opacus, no TenSEAL.
    for absent in ("torch", "tenseal", "opacus", "train", "[he"):
        assert absent not in gateway.lower(), absent
    assert "postgres" in gateway and "phe" in gateway and "gmpy2" in gateway
    assert "torch" in node and re.search(r"\.\[[^\]]*\bhe\b[^\]]*\btrain\b", node)
    # The gateway's Paillier pins are the `he` extra's (pyproject.toml).
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["he"]
    for pin in re.findall(r'"((?:phe|gmpy2)[^"]*)"', gateway):
        assert pin in extra, pin


def test_images_keep_state_in_a_volume_and_run_unprivileged() -> None:
    stages = dockerfile_stages()
    for target in ("gateway", "node"):
        chain = inherited(stages, target)
        assert any('"/data"' in a or a == "/data" for s in chain for a in s.args("VOLUME")), target
        assert chain[0].args("USER") == ["10001:10001"], target
        assert final_env(stages, target)["XDP_DATA_DIR"] == "/data"
    assert stages[list(stages)[-1]].name == "gateway"  # `docker build .` builds the gateway


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    from fnmatch import fnmatch

    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = 0
    for stage in dockerfile_stages().values():
        for arg in stage.args("COPY"):
            if "--from=" in arg:
                continue
            for src in [t for t in shlex.split(arg) if not t.startswith("--")][:-1]:
                copied += 1
                assert (ROOT / src).exists(), src
                for pattern in ignored:
                    bare = pattern.removeprefix("**/").rstrip("/")
                    assert not fnmatch(src, bare) and not src.startswith(bare + "/"), (src, pattern)
    assert copied >= 4  # pyproject.toml, README.md, src, docker/xdp-init.sh


def test_healthcheck_reads_the_port_from_the_settings() -> None:
    stages = dockerfile_stages()
    (check,) = stages["gateway"].args("HEALTHCHECK")
    cmd = exec_form(check.split("CMD", 1)[1].strip())
    assert cmd == ["python", "-m", "xdp_compute.gateway.server", "healthcheck"]
    assert not re.search(r"\b\d{4,5}\b", check), "a port number written into the HEALTHCHECK"
    env = final_env(stages, "gateway")
    assert int(env["XDP_HTTP_PORT"]) > 0 and env["XDP_HTTP_HOST"] == "0.0.0.0"
    assert stages["node"].args("HEALTHCHECK") == ["NONE"]  # a node opens no port


def test_every_variable_the_images_set_is_a_declared_setting() -> None:
    stages = dockerfile_stages()
    declared = {env_name(f) for f in Settings.model_fields} | set(CLIENT_VARIABLES)
    for target in ("gateway", "node"):
        for var in final_env(stages, target):
            if var.startswith("XDP_"):
                assert var in declared, (target, var)
    env = {k: v for k, v in final_env(stages, "gateway").items() if k.startswith("XDP_")}
    s = Settings(**{f: env[env_name(f) or ""] for f in Settings.model_fields if env_name(f) in env})
    assert s.db_url == "sqlite:////data/gateway.db" and s.tls_cert == "/data/pki/gateway.pem"


# ------------------------------------------------------------------ compose.yaml
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        have = env.get(name)
        if op in (":?", "?") and (have is None or (op == ":?" and have == "")):
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and (have is None or (op == ":-" and have == "")):
            return arg
        return have or ""

    return _VAR.sub(sub, value)


def compose(env: dict[str, str] = ENV) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return dict(interpolate(raw, env))


SERVICE_KEYS = {"build", "image", "restart", "depends_on", "environment", "command", "entrypoint", "user",
                "volumes", "ports", "healthcheck", "pull_policy"}


def test_compose_interpolates_and_requires_the_database_password() -> None:
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose({})
    c = compose()
    assert {k for k in c if not k.startswith("x-")} <= {"name", "services", "volumes"}  # x-*: extensions
    assert c["name"] == "xdp-compute"
    for name, svc in c["services"].items():
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)


def test_compose_services_build_targets_the_dockerfile_has() -> None:
    stages = dockerfile_stages()
    for name, svc in compose()["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / "Dockerfile").exists()
            assert svc["build"]["target"] in stages, name
    by_role = {n: s["build"]["target"] for n, s in compose()["services"].items() if "build" in s}
    assert by_role["gateway"] == "gateway" and {by_role[f"clinic-{i}"] for i in (1, 2, 3)} == {"node"}


def test_compose_references_resolve() -> None:
    c = compose()
    services, declared = c["services"], set(c["volumes"])
    used: dict[str, list[str]] = {}
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services and dep != name, (name, dep)
            assert how["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if how["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", dep  # a one-shot
            if how["condition"] == "service_healthy":
                target = services[dep]
                assert "healthcheck" in target or target.get("build", {}).get("target") == "gateway", dep
        for vol in svc.get("volumes") or []:
            source, target = vol.split(":")[:2]
            assert target.startswith("/"), vol
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), (name, source)  # bind mounts exist in the repository
            else:
                assert source in declared, (name, source)
                used.setdefault(source, []).append(name)
    assert set(used) == declared  # no declared volume unused


def test_compose_runs_the_gateway_on_postgresql_with_its_ports_as_configured() -> None:
    c = compose()
    services = c["services"]
    pg = services["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"]) and "healthcheck" in pg
    gw = services["gateway"]
    env = {**final_env(dockerfile_stages(), "gateway"), **gw["environment"]}
    db = env["XDP_DB"]
    assert db.startswith("postgresql://xdp:s3cret-for-tests@postgres:5432/xdp")
    assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
    published = {int(p.split(":")[1]) for p in gw["ports"]}
    assert published == {int(env["XDP_HTTP_PORT"]), int(env["XDP_GRPC_PORT"])}
    assert gw["command"] == ["gateway"]  # listen addresses come from the settings, as the probe's do
    nodes = [n for n in services if n.startswith("clinic-")]
    assert len(nodes) == 3
    for n in nodes:
        cmd = services[n]["command"]
        host, port = cmd[cmd.index("--gateway") + 1].split(":")
        assert host == "gateway" and int(port) == int(env["XDP_GRPC_PORT"])
        url = services[n]["environment"]["XDP_URL"]
        assert url == f"https://gateway:{env['XDP_HTTP_PORT']}"


def test_compose_nodes_have_their_own_volume_manifest_and_credentials() -> None:
    c = compose()
    services = c["services"]
    nodes = sorted(n for n in services if n.startswith("clinic-"))
    data_volumes = set()
    for n in nodes:
        vols = dict(v.split(":")[:2][::-1] for v in services[n]["volumes"])
        data_volumes.add(vols["/data"])
        manifest = load_manifest(ROOT / vols["/data/input"] / "node.toml")  # validates it
        assert manifest.node_name == n and str(manifest.state_path).startswith("/data/")
        assert not any(v.startswith("ca:") for v in services[n]["volumes"])  # never the CA key
    assert len(data_volumes) == 3
    # The one-shots issue certificates and tokens for exactly these nodes, into their volumes.
    pki, tokens = services["pki"], services["tokens"]
    assert pki["command"][:5] == ["pki", "/ca", "/gateway", "/nodes", "gateway"] and sorted(pki["command"][5:]) == nodes
    assert tokens["command"][:2] == ["tokens", "/nodes"] and sorted(tokens["command"][2:]) == nodes
    for one_shot in (pki, tokens):
        mounted = dict(v.split(":")[:2][::-1] for v in one_shot["volumes"])
        for n in nodes:
            assert mounted[f"/nodes/{n}"] == dict(v.split(":")[:2][::-1] for v in services[n]["volumes"])["/data"]
    assert "ca:/ca" in pki["volumes"] and [s for s in services if "ca:/ca" in services[s].get("volumes", [])] == ["pki"]


# ------------------------------------------------------------------ outside Docker: xdp-init, CMD, HEALTHCHECK
def init(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    return subprocess.run(["sh", str(ROOT / "docker" / "xdp-init.sh"), *args], capture_output=True, text=True,
                          check=False, timeout=120,
                          env={**base, "PATH": f"{VENV_BIN}:{base.get('PATH', '')}", **(env or {})})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    r = init("pki", str(root / "ca"), str(root / "gateway"), str(root / "nodes"), "gateway", "clinic-1", "clinic-2")
    assert r.returncode == 0, r.stderr
    return root


def test_init_pki_writes_each_role_only_its_own_material(deployment: Path) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((deployment / "ca" / "ca.pem").read_bytes())
    gw = deployment / "gateway" / "pki"
    assert sorted(p.name for p in gw.iterdir()) == ["ca.pem", "gateway.key", "gateway.pem"]
    cert = x509.load_pem_x509_certificate((gw / "gateway.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "gateway" in names and cert.issuer == ca.subject
    for n in ("clinic-1", "clinic-2"):
        d = deployment / "nodes" / n / "pki"
        assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "node.key", "node.pem"]
        node_cert = x509.load_pem_x509_certificate((d / "node.pem").read_bytes())
        node_cert.verify_directly_issued_by(ca)
        assert n in node_cert.subject.rfc4514_string()
        assert (d / "node.key").stat().st_mode & 0o077 == 0
    # Idempotent: a second run keeps every file.
    before = {p: p.read_bytes() for p in deployment.rglob("*") if p.is_file()}
    r = init("pki", str(deployment / "ca"), str(deployment / "gateway"), str(deployment / "nodes"), "gateway",
             "clinic-1", "clinic-2")
    assert r.returncode == 0, r.stderr
    assert {p: p.read_bytes() for p in deployment.rglob("*") if p.is_file()} == before


def test_init_tokens_gives_each_node_a_holder_token(deployment: Path, tmp_path: Path) -> None:
    from xdp_compute.gateway.store import Store

    db = f"sqlite:///{tmp_path / 'gw.db'}"
    r = init("tokens", str(deployment / "nodes"), "clinic-1", env={"XDP_DB": db})
    assert r.returncode != 0 and "no database at" in r.stderr  # the gateway initialises it first
    Store.open(db).close()
    r = init("tokens", str(deployment / "nodes"), "clinic-1", "clinic-2", env={"XDP_DB": db})
    assert r.returncode == 0, r.stderr
    store = Store.open(db, create=False)
    try:
        for n in ("clinic-1", "clinic-2"):
            token = deployment / "nodes" / n / "holder.token"
            assert token.stat().st_mode & 0o077 == 0
            p = store.authenticate(token.read_text().strip())
            assert (p.name, p.role) == (f"{n}-holder", "holder")
    finally:
        store.close()
    assert init("tokens", str(deployment / "nodes"), "clinic-1", env={"XDP_DB": db}).returncode == 0  # kept


@dataclass
class Container:
    """An image's ENTRYPOINT + CMD with its ENV run as a local process: ``/data`` moved to a
    folder here and compose's service names replaced by loopback addresses."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def run_image(target: str, data: Path, rename: dict[str, str], **env_over: str) -> Container:
    stages = dockerfile_stages()

    def local(v: str) -> str:
        for old, new in {"/data": str(data), **rename}.items():
            v = v.replace(old, new)
        return v

    env = {k: local(v) for k, v in final_env(stages, target).items() if k.startswith("XDP_")} | env_over
    (entrypoint,) = stages["runtime"].args("ENTRYPOINT")
    (cmd,) = stages[target].args("CMD")
    argv = [local(a) for a in exec_form(entrypoint) + exec_form(cmd)]
    assert argv[0] == "xdp"
    base = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    log = data.parent / f"{data.name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(VENV_BIN / argv[0]), *argv[1:]], cwd=data, env={**base, **env}, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Container(proc, env, log)


def loopback_gateway_env() -> dict[str, str]:
    return {"XDP_HTTP_HOST": "127.0.0.1", "XDP_GRPC_HOST": "127.0.0.1", "XDP_HTTP_PORT": str(free_port()),
            "XDP_GRPC_PORT": str(free_port()), "XDP_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture
def image_gateway(deployment: Path) -> Iterator[tuple[dict[str, str], int]]:
    """The gateway image's CMD and ENV as a process (addresses on loopback); yields its
    environment and HTTP port."""
    c = run_image("gateway", deployment / "gateway", {}, **loopback_gateway_env())
    try:
        yield c.env, int(c.env["XDP_HTTP_PORT"])
    finally:
        c.stop()


def wait_healthy(env: dict[str, str], what: Container | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    r = healthcheck(env)
    while r.returncode != 0 and time.monotonic() < deadline:
        assert what is None or what.proc.poll() is None, what.tail()
        time.sleep(0.5)
        r = healthcheck(env)
    assert r.returncode == 0, r.stderr + (what.tail() if what else "")


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (check,) = dockerfile_stages()["gateway"].args("HEALTHCHECK")
    cmd = exec_form(check.split("CMD", 1)[1].strip())
    base = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    return subprocess.run([sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]], capture_output=True,
                          text=True, check=False, timeout=30, env={**base, **env})


@pytest.mark.slow
def test_the_image_command_serves_tls_and_its_healthcheck_follows_the_port(
        image_gateway: tuple[dict[str, str], int]) -> None:
    env, port = image_gateway
    wait_healthy(env)
    # The same probe pointed at another port (as XDP_HTTP_PORT would say) finds nothing there.
    other = healthcheck({**env, "XDP_HTTP_PORT": str(free_port())})
    assert other.returncode == 1 and "unhealthy" in other.stderr and f"{port}" not in other.stderr
    # HTTPS only: plaintext gets no answer on that port.
    import httpx

    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.slow
def test_the_compose_recipe_runs_outside_docker(tmp_path: Path) -> None:
    """compose.yaml's steps as local processes: pki, the gateway image, tokens, two node images
    (their CMD and ENV, with the example manifests), the owner's invitation, a query."""
    from xdp_compute import Client

    services = compose()["services"]
    nodes = ["clinic-1", "clinic-2"]
    pki = services["pki"]["command"]
    r = init("pki", str(tmp_path / "ca"), str(tmp_path / "gateway"), str(tmp_path / "nodes"), pki[4], *nodes)
    assert r.returncode == 0, r.stderr
    gw = run_image("gateway", tmp_path / "gateway", {}, **loopback_gateway_env())
    running = [gw]
    try:
        wait_healthy(gw.env, gw)
        r = init("tokens", str(tmp_path / "nodes"), *nodes, env={"XDP_DB": gw.env["XDP_DB"]})
        assert r.returncode == 0, r.stderr
        url, ca = f"https://127.0.0.1:{gw.env['XDP_HTTP_PORT']}", str(tmp_path / "gateway" / "pki" / "ca.pem")
        tokens = {n: (tmp_path / "nodes" / n / "holder.token").read_text().strip() for n in nodes}
        grpc = f"127.0.0.1:{gw.env['XDP_GRPC_PORT']}"
        for i, n in enumerate(nodes):
            data = tmp_path / "nodes" / n
            (data / "input").mkdir()
            example = ROOT / "docker" / "nodes" / n
            (data / "input" / "visits.csv").write_bytes((example / "visits.csv").read_bytes())
            (data / "input" / "node.toml").write_text((example / "node.toml").read_text()
                                                       .replace("/data", str(data)))
            running.append(run_image("node", data, {"gateway:50051": grpc}, XDP_NODE_PRELOAD="false",
                                     XDP_NODE_THREADS="1"))
            with Client(url, tokens[n], ca=ca) as holder:  # a holder sees its own nodes
                deadline = time.monotonic() + 60
                while not any(x.name == n and x.online for x in holder.nodes()):
                    assert running[-1].proc.poll() is None and time.monotonic() < deadline, running[-1].tail()
                    time.sleep(0.25)
            if i + 1 < len(nodes):
                with Client(url, tokens[nodes[0]], ca=ca) as owner:  # the owner lets the next holder in
                    owner.invite("visits", f"{nodes[i + 1]}-holder")
        analyst = subprocess.run([str(VENV_BIN / "xdp"), "admin", "create-token", "--role", "analyst", "--name",
                                  "ana", "--db", gw.env["XDP_DB"]], capture_output=True, text=True, check=True,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("XDP_")})
        token = analyst.stdout.strip().split()[-1].strip('"')
        with Client(url, token, ca=ca) as a:
            res = a.query("SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic", epsilon=1.0)
        assert sorted(row["clinic"] for row in res.rows) == ["east", "north", "south"]
        assert abs(sum(row["n"] for row in res.rows) - 400) < 60  # 200 example rows per node
    finally:
        for c in reversed(running):
            c.stop()
