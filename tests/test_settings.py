"""Settings (issue #14): every XDP_* variable declared once, typed and described, validated with a
message that names the variable; ``Settings()`` / ``.with_`` keep working as before.

Processes that fail on a bad value are in tests/gateway/test_gateway_start.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xdp_compute.config import (
    CLIENT_VARIABLES,
    TEST_VARIABLES,
    InvalidSetting,
    NodeSettings,
    Settings,
    env_name,
)

SRC = Path(__file__).parents[1] / "src" / "xdp_compute"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("XDP_"):
            monkeypatch.delenv(k)


def declared() -> set[str]:
    fields = {env_name(f) for f in Settings.model_fields} | {env_name(f, NodeSettings) for f in NodeSettings.model_fields}
    return {v for v in fields if v} | set(CLIENT_VARIABLES) | set(TEST_VARIABLES)


def test_every_xdp_variable_the_code_names_is_declared_once() -> None:
    """Any XDP_* name in the source is a Settings field, a client variable or a test switch."""
    named: set[str] = set()
    for path in SRC.rglob("*.py"):
        named |= set(re.findall(r"\bXDP_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    named -= {"XDP_TEST"}  # the prefix itself, in prose
    assert named - declared() == set(), "undeclared XDP_* variables"
    fields = [env_name(f) for f in Settings.model_fields if env_name(f)]
    fields += [env_name(f, NodeSettings) for f in NodeSettings.model_fields]
    assert len(fields) == len(set(fields))
    assert not set(fields) & set(CLIENT_VARIABLES) and not set(fields) & set(TEST_VARIABLES)


def test_every_setting_has_a_type_and_a_description() -> None:
    for name, info in [*Settings.model_fields.items(), *NodeSettings.model_fields.items()]:
        assert info.annotation is not None, name
        assert info.description and len(info.description) > 10, name


def test_node_settings_are_validated_too(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NodeSettings().witness_refresh_seconds == 30.0
    monkeypatch.setenv("XDP_WITNESS_REFRESH", "soon")
    with pytest.raises(InvalidSetting, match=r"^XDP_WITNESS_REFRESH: .*'soon'"):
        NodeSettings()


def test_environment_values_are_read_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_ROUND_TIMEOUT", "7.5")
    monkeypatch.setenv("XDP_DB", "sqlite:///x.db")
    monkeypatch.setenv("XDP_HTTP_PORT", "9001")
    monkeypatch.setenv("XDP_RESTRICTED_CATEGORIES", "health, finance")
    monkeypatch.setenv("XDP_MAX_COLLUDING_NODES", "")
    s = Settings()
    assert s.round_timeout_seconds == 7.5 and s.db_url == "sqlite:///x.db" and s.http_port == 9001
    assert s.restricted_categories == ("health", "finance") and s.max_colluding_nodes is None


def test_plaintext_is_never_an_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INSECURE", "insecure", "XDP_INSECURE"):
        monkeypatch.setenv(name, "1")
    assert Settings().insecure is False
    assert Settings().with_(insecure=True).insecure is True


@pytest.mark.parametrize(("var", "value"), [("XDP_ROUND_TIMEOUT", "abc"), ("XDP_HTTP_PORT", "70000"),
                                            ("XDP_SECAGG_CORRUPT_RATE", "1"), ("XDP_MAX_COLLUDING_NODES", "-2"),
                                            ("XDP_HEARTBEAT_SECONDS", "0")])
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(InvalidSetting) as e:
        Settings()
    assert e.value.detail.startswith(f"{var}: ") and repr(value) in e.value.detail
    assert "\n" not in e.value.detail


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_LOG_KEY", "c2VjcmV0LXNlZWQ=")
    monkeypatch.setenv("XDP_DB", "postgresql://xdp:hunter2@db/xdp")
    s = Settings()
    assert s.log_key == "c2VjcmV0LXNlZWQ=" and s.db_url.endswith("hunter2@db/xdp")
    for shown in (repr(s), str(s)):
        assert "c2VjcmV0" not in shown and "hunter2" not in shown
    monkeypatch.setenv("XDP_HTTP_PORT", "x")
    with pytest.raises(InvalidSetting) as e:  # another variable's error does not show them either
        Settings()
    assert "hunter2" not in e.value.detail and "c2VjcmV0" not in e.value.detail
    monkeypatch.delenv("XDP_HTTP_PORT")
    monkeypatch.setenv("XDP_DB", "")
    with pytest.raises(InvalidSetting, match="^XDP_DB: "):
        Settings()


def test_keywords_win_and_with_derives_a_validated_frozen_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_REGION", "CN-GD")
    s = Settings(db_url="sqlite://", max_body_bytes=1 << 20)
    assert s.region == "CN-GD" and s.db_url == "sqlite://" and s.max_body_bytes == 1 << 20
    t = s.with_(http_host="0.0.0.0", http_port=8443, log_key_path=Path("k.pem"))
    assert (t.http_host, t.http_port, t.log_key_path, t.db_url) == ("0.0.0.0", 8443, Path("k.pem"), "sqlite://")
    assert s.http_port == 8000  # unchanged
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen-instance error)
        s.http_port = 1  # type: ignore[misc]
    with pytest.raises(InvalidSetting, match=r"^http_port: "):  # a flag's value: named by its field
        s.with_(http_port=0)


def test_a_node_with_a_bad_setting_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    example = Path(__file__).parents[1] / "docker" / "nodes" / "clinic-1"
    shutil.copy(example / "visits.csv", tmp_path)
    (tmp_path / "node.toml").write_text((example / "node.toml").read_text().replace('"/data/state"', '"state"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    r = subprocess.run([sys.executable, "-m", "xdp_compute", "node", "--gateway", "127.0.0.1:1", "--insecure",
                        "--no-preload", "--manifest", str(tmp_path / "node.toml")], capture_output=True, text=True,
                       check=False, timeout=60, cwd=tmp_path,
                       env={**env, "XDP_TOKEN": "xdp_unused", "XDP_WITNESS_REFRESH": "soon"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: XDP_WITNESS_REFRESH: Input should be a valid number, unable to parse string as a number, got 'soon'"]
    assert not (tmp_path / "state").exists()  # stopped before writing anything
