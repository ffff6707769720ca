"""The dependency direction of the package layout (see docs/architecture.md), checked by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vidiff"

# What each subpackage may import from vidiff (besides itself). Leaves: utils, io.
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "io": {"utils"},
    "diffusion": {"utils", "io"},
    "networks": {"utils", "io"},
    "autoencoders": {"utils", "io"},
    "conditioning": {"utils", "io"},
    "metrics": {"utils", "io"},
    "adapters": {"utils", "io", "networks"},  # LoRA / control adapters: never pipelines
    "parallel": {"utils", "io", "diffusion", "networks", "autoencoders"},  # exact multi-process inference
    "pipelines": {"utils", "io", "diffusion", "networks", "autoencoders", "conditioning", "adapters", "parallel"},
    "training": {"utils", "io", "diffusion", "networks", "autoencoders", "conditioning", "pipelines",
                 "metrics", "adapters"},
    "serve": {"utils", "io", "pipelines"},  # the top, with cli: nothing but cli imports it
    "postprocess": {"utils", "io", "metrics"},  # filters on finished videos (deflicker)
    "export": {"utils", "io", "diffusion", "networks", "autoencoders", "conditioning", "pipelines"},  # ONNX
    "cli": {"utils", "io", "diffusion", "networks", "autoencoders", "conditioning", "pipelines", "training",
            "metrics", "serve", "adapters", "postprocess", "export", "parallel"},
}


def _vidiff_imports(path: Path, rel: tuple[str, ...] | None = None) -> set[str]:
    """Second-level vidiff packages imported by one file (absolute and relative imports).

    ``rel`` is the file's path inside ``vidiff/`` (defaults to where ``path`` lies).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = rel or path.relative_to(PKG).parts
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(rel[:-1])[: len(rel) - node.level]
                mod = ".".join(["vidiff", *base, *([node.module] if node.module else [])])
                names = [mod]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vidiff" and len(parts) > 1:
                found.add(parts[1])
    return found


def _files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if len(p.relative_to(PKG).parts) > 1)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_dependency_direction(path: Path) -> None:
    pkg = path.relative_to(PKG).parts[0]
    if pkg not in ALLOWED:
        pytest.fail(f"vidiff/{pkg} is not in the layout of docs/architecture.md; add it to ALLOWED")
    bad = _vidiff_imports(path) - ALLOWED[pkg] - {pkg, "__init__"}
    assert not bad, f"{path.relative_to(PKG)} imports vidiff.{sorted(bad)}, against the dependency direction"


def test_checker_sees_violations(tmp_path: Path) -> None:
    """The parser itself must catch absolute and relative imports (so the test above can fail)."""
    f = tmp_path / "probe.py"
    f.write_text("from ..networks import x\nfrom . import y\nimport vidiff.autoencoders.vae\n")
    assert _vidiff_imports(f, ("diffusion", "probe.py")) == {"networks", "diffusion", "autoencoders"}
