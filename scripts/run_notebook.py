"""Execute a notebook top to bottom in a fresh kernel of this interpreter (``make notebook``).

    python scripts/run_notebook.py [NOTEBOOK] [--output EXECUTED.ipynb]

The kernel is the ``python3`` kernelspec of this interpreter's prefix (the venv's ipykernel), never one
found elsewhere on the machine, and the script checks inside the kernel that it runs this prefix's Python:
the notebook starts gateway and node processes with the kernel's ``sys.executable``. The kernel's working
directory is a temporary folder, so the notebook in the repository is never written to. On the first
failing cell it runs the cells tagged ``cleanup`` (the notebook's last cell stops any cluster it started),
then exits non-zero with that cell's source and error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL = "python3"


class NotebookFailed(Exception):
    """A code cell raised (or the kernel is not this interpreter's); ``cell_index`` is None for the latter."""

    def __init__(self, message: str, cell_index: int | None, notebook: Any = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.notebook = notebook


@dataclass
class NotebookRun:
    notebook: Any  # nbformat.NotebookNode with outputs
    kernel_prefix: str
    seconds: float
    cell_seconds: dict[int, float] = field(default_factory=dict)


def _kernel_spec_manager() -> Any:
    """A spec manager that sees only this prefix's kernels (installing ipykernel's spec there if absent)."""
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    if not (kernels / KERNEL / "kernel.json").exists():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
                       check=True, capture_output=True, text=True)
    # ``ensure_native_kernel=False``: no fallback to a spec found in the user's or the system's Jupyter path.
    return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


def _stream_text(cell: Any, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == name)


def run_notebook(path: Path = NOTEBOOK, *, workdir: Path | None = None, env: Mapping[str, str] | None = None,
                 timeout: int = 600, log: Callable[[str], None] | None = None) -> NotebookRun:
    """Run every code cell of ``path`` in order; raise ``NotebookFailed`` on the first error.

    ``env`` is the kernel's whole environment (default: this process's). ``timeout`` is per cell, in seconds.
    ``workdir`` is the kernel's working directory (default: a temporary folder, removed afterwards).
    """
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    own_workdir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="xdp-notebook-")) if workdir is None else workdir
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=_kernel_spec_manager())
    client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=timeout,
                            resources={"metadata": {"path": str(wd)}})
    started = time.monotonic()
    cell_seconds: dict[int, float] = {}
    say = log or (lambda _msg: None)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    cleanup = [i for i in code if "cleanup" in nb.cells[i].get("metadata", {}).get("tags", [])]
    try:
        with client.setup_kernel(env=dict(os.environ if env is None else env), cwd=str(wd)):
            # nbclient stores an executed cell back at its index: run the probe appended, then drop it.
            nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
            try:
                client.execute_cell(nb.cells[-1], len(nb.cells) - 1, store_history=False)
            finally:
                probe = nb.cells.pop()
            prefix = _stream_text(probe).strip()
            if os.path.realpath(prefix) != os.path.realpath(sys.prefix):
                raise NotebookFailed(f"kernel {KERNEL!r} runs the Python of {prefix!r}, not {sys.prefix!r}", None, nb)
            say(f"kernel {KERNEL!r}: {prefix}")
            for n, index in enumerate(code, 1):
                cell = nb.cells[index]
                t0 = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as e:
                    for j in cleanup:
                        if j != index:
                            try:
                                client.execute_cell(nb.cells[j], j)
                            except CellExecutionError as ce:
                                say(f"cleanup cell {j} failed too: {ce.ename}: {ce.evalue}")
                    raise NotebookFailed(f"cell {index} (code cell {n}/{len(code)}) failed:\n{e}", index, nb) from e
                cell_seconds[index] = time.monotonic() - t0
                say(f"cell {index:2d} ({n}/{len(code)}) ok in {cell_seconds[index]:.1f}s: "
                    f"{cell.source.splitlines()[0] if cell.source else ''}")
        return NotebookRun(nb, prefix, time.monotonic() - started, cell_seconds)
    finally:
        if own_workdir:
            shutil.rmtree(wd, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK)
    ap.add_argument("--output", type=Path, help="also write the executed notebook (with outputs) here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = ap.parse_args(argv)
    import nbformat

    mode = ("the gateway in XDP_URL" if os.environ.get("XDP_URL") and os.environ.get("XDP_TOKEN")
            else "a local cluster it starts (XDP_URL/XDP_TOKEN unset)")
    print(f"==> executing {args.notebook} against {mode}", flush=True)
    try:
        run = run_notebook(args.notebook, timeout=args.timeout, log=lambda m: print("    " + m, flush=True))
    except NotebookFailed as e:
        if args.output and e.notebook is not None:
            nbformat.write(e.notebook, str(args.output))
        print(f"notebook failed: {e}", file=sys.stderr)
        return 1
    if args.output:
        nbformat.write(run.notebook, str(args.output))
    print(f"==> notebook ran clean in {run.seconds:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
