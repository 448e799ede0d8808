"""The walkthrough notebook ships without outputs and runs as shipped, starting its own local cluster."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def _runner() -> object:
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_notebook_is_stored_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 9
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has stored outputs: strip them before committing"
            assert cell["execution_count"] is None, f"cell {i} has execution_count {cell['execution_count']}"
        assert "attachments" not in cell, f"cell {i} has attachments"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_uses_env_or_starts_and_closes_its_own_cluster() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    first, last = code[0], code[-1]
    assert "os.environ.get('XDP_URL')" in first and "os.environ.get('XDP_TOKEN')" in first
    assert "start_demo_cluster(" in first and "key_dir=str(cluster.root / 'analyst-keys')" in first
    assert "if cluster is not None:" in last and "cluster.close()" in last and "shutil.rmtree(cluster.root" in last
    assert not any("127.0.0.1:8000" in src or "'...'" in src for src in code), "a hard-coded URL or token is back"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_runs_as_shipped(tmp_path: Path) -> None:
    runner = _runner()
    env = {k: v for k, v in os.environ.items() if k not in ("XDP_URL", "XDP_TOKEN")}
    env["XDP_KEY_DIR"] = str(tmp_path / "keys-must-stay-unused")
    try:
        run = runner.run_notebook(NOTEBOOK, workdir=tmp_path, env=env, log=print)  # type: ignore[attr-defined]
    except runner.NotebookFailed as e:  # type: ignore[attr-defined]
        pytest.fail(str(e), pytrace=False)
    assert os.path.realpath(run.kernel_prefix) == os.path.realpath(sys.prefix)
    cells = run.notebook.cells
    code = [(i, c) for i, c in enumerate(cells) if c.cell_type == "code"]
    for i, cell in code:
        assert cell.execution_count is not None, f"cell {i} did not run"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {i}: {errors[0].ename}: {errors[0].evalue}"
    assert "local cluster in" in runner._stream_text(code[0][1])  # type: ignore[attr-defined]

    query = next(c for _, c in code if c.source.startswith("r = c.query(sql, epsilon=1.0)\n"))
    printed = runner._stream_text(query)  # type: ignore[attr-defined]
    lines = printed.strip().splitlines()
    assert lines[0].split()[:3] == ["district", "n", "mean_cost"], printed
    assert re.fullmatch(r"[- ]+", lines[1]), printed
    assert {ln.split()[0] for ln in lines[2:]} == {"Siming", "Huli", "Jimei"}, printed
    # verify_receipt(r) is the cell's value: True, or it raises (an error output, caught above)
    assert [o.data["text/plain"] for o in query.outputs if o.output_type == "execute_result"] == ["True"]

    card = next(c for _, c in code if "job.model_card()" in c.source)
    assert any(o.output_type == "execute_result" and "rounds_done" in o.data.get("text/plain", "")
               for o in card.outputs), card.outputs
    # Paillier keys went to the cluster's temp folder, not to XDP_KEY_DIR / ~/.xdp
    assert not (tmp_path / "keys-must-stay-unused").exists()
    # the last cell closed the cluster it started and removed its folder
    assert "cluster.close()" in code[-1][1].source and code[-1][1].execution_count is not None
