"""The README's manifest example loads with the real manifest loader (issue #14): a holder who
copies it starts from a manifest that validates."""

from __future__ import annotations

import re
from pathlib import Path

from xdp_compute.domain.manifest import SOURCE_KINDS, load_manifest, parse_manifest_text

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- manifest-example -->"


def readme_manifest_example(text: str) -> str:
    """The ```toml block right after the ``<!-- manifest-example -->`` comment (its first such use)."""
    block = re.compile(r"\s*```toml\n(.*?)\n```", re.DOTALL)
    for at in (m.end() for m in re.finditer(re.escape(MARKER), text)):
        found = block.match(text, at)
        if found:
            return found.group(1)
    raise AssertionError(f"README.md has no manifest example ({MARKER} just before a ```toml block)")


def test_readme_manifest_example_loads(tmp_path: Path) -> None:
    example = readme_manifest_example(README.read_text(encoding="utf-8"))
    # The sources the example names, as a holder would have them next to the manifest.
    for ds in parse_manifest_text(example, check_files=False).datasets:
        ref = ds.source_ref
        if ref.layout == "file":
            (tmp_path / ref.root).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ref.root).write_text("")
        elif ref.layout in ("folder", "glob"):
            (tmp_path / ref.root).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "node.toml"
    path.write_text(example, encoding="utf-8")
    m = load_manifest(path)  # every check, files included; raises ManifestError naming the key
    assert m.datasets and all(ds.source_kind in SOURCE_KINDS for ds in m.datasets)
    # The example shows a folder of hive-partitioned Parquet files as well as a single file.
    assert {ds.source_ref.layout for ds in m.datasets} >= {"file", "folder"}


def test_the_extractor_finds_the_marked_block() -> None:
    text = f"# x\n\n```toml\nnot = 'this'\n```\n\nSee `{MARKER}`.\n\n{MARKER}\n```toml\n[node]\nname = \"a\"\n```\n"
    assert readme_manifest_example(text) == '[node]\nname = "a"'
